"""The numbers of method.md §5–6 as pure functions of answers, margins and matrices.

Nothing here touches a model: :mod:`corsa.evaluate` produces the answers and margins, these
functions turn them into fractions. Every function says what it does with empty input.

Matching an answer against a target (``contains``) follows §5 — case- and
whitespace-normalised — and reads "contains" as *whole words*: y⁺ = "Rome" is not found in
"Romeo", nor "1" in "1995". A word boundary is only required where the target itself starts
or ends with a letter or digit, and scripts written without spaces (CJK, kana, Hangul) never
need one. Sentence punctuation and quotes at the ends of a text are ignored ("Paris." is
"paris"), other symbols are kept ("C++" stays "c++").

Sampled generation gives several answers per prompt: wherever an answer is accepted, a list of
answers is too, and the prompt then scores the fraction of its samples that pass.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np

# sentence punctuation and quotes stripped from both ends of a text; + # % $ and others stay
_END_PUNCT = ".,;:!?\"'`()[]{}“”‘’«»„…"
# a letter or digit of a script that separates its words with spaces
_WORD = r"[^\W_\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]"
_IS_WORD = re.compile(_WORD)

Answer = str | Sequence[str]  # one generated answer, or the samples drawn for one prompt


def normalise(text: str | None) -> str:
    """NFKC, case-folded, whitespace collapsed, sentence punctuation stripped from the ends."""
    text = unicodedata.normalize("NFKC", text or "").casefold()
    return " ".join(text.split()).strip(_END_PUNCT + " ")


def contains(answer: str | None, target: str | None, whole_words: bool = True) -> bool:
    """Whether the normalised `answer` mentions the normalised `target`.

    An empty target (after normalisation) is never mentioned; an empty answer mentions nothing.
    """
    t, a = normalise(target), normalise(answer)
    if not t or not a:
        return False
    if not whole_words:
        return t in a
    return re.search(_whole_word(t), a) is not None


def _whole_word(t: str) -> str:
    """The regex that finds the normalised, non-empty target `t` as whole words (module docstring)."""
    pattern = re.escape(t)
    if _IS_WORD.match(t[0]):
        pattern = f"(?<!{_WORD})" + pattern
    if _IS_WORD.match(t[-1]):
        pattern += f"(?!{_WORD})"
    return pattern


def mentions_any(targets: Iterable[str | None]):
    """A test `text -> bool`: does the text mention any of `targets`, as :func:`contains` reads it.

    The same rule as ``any(contains(text, t) for t in targets)``, compiled once into one pattern,
    for a test made many times against many targets (the adapter's scope, :mod:`corsa.scope`).
    Empty targets are dropped; with none left, nothing is mentioned.
    """
    keys = sorted({t for t in map(normalise, targets) if t}, key=len, reverse=True)
    if not keys:
        return lambda text: False
    pattern = re.compile("|".join(_whole_word(t) for t in keys))
    return lambda text: (a := normalise(text)) != "" and pattern.search(a) is not None


def mentions(answer: str | None, targets: Iterable[str | None]) -> bool:
    """Whether the answer mentions any of `targets` (an answer and its aliases)."""
    return any(contains(answer, t) for t in targets)


def hit(answer: str | None, new: Iterable[str | None], old: Iterable[str | None] = (), strict: bool = False) -> bool:
    """One prompt passes: it mentions y⁺ (or an alias), and with `strict` does not mention y⁻.

    An answer that names both y⁺ and y⁻ passes the plain test and fails the strict one.
    """
    return mentions(answer, new) and not (strict and mentions(answer, old))


def hit_rate(answers: Answer, new: Iterable[str | None], old: Iterable[str | None] = (),
             strict: bool = False) -> float:
    """`hit` for one answer (0 or 1), or the fraction of a prompt's samples that hit."""
    new, old = tuple(new), tuple(old)
    if isinstance(answers, str) or answers is None:
        return float(hit(answers, new, old, strict))
    if not answers:
        return 0.0
    return sum(hit(a, new, old, strict) for a in answers) / len(answers)


def fraction(scores: Iterable[float | bool]) -> float | None:
    """Mean of per-prompt scores in [0, 1]; ``None`` when there is nothing to score."""
    scores = [float(s) for s in scores]
    return sum(scores) / len(scores) if scores else None


def reliability(answers: Sequence[Answer], targets_new: Sequence[str], targets_old: Sequence[str | None] | None = None,
                strict: bool = False) -> float | None:
    """Fraction of prompts whose answer contains y⁺ (§5 reliability; over paraphrases: generality).

    `strict` also requires that y⁻ is absent; a missing y⁻ (None) is absent. ``None`` for no prompts.
    """
    if targets_old is None:
        targets_old = [None] * len(answers)
    if not len(answers) == len(targets_new) == len(targets_old):
        raise ValueError(f"{len(answers)} answers for {len(targets_new)} new and {len(targets_old)} old targets")
    return fraction(hit_rate(a, (n,), (o,), strict) for a, n, o in zip(answers, targets_new, targets_old))


def crossover(answers: Sequence[str | None], targets_new: Sequence[str], pool: Iterable[str]) -> float | None:
    """Fraction of edit prompts answered with *another* edit's y⁺ instead of their own.

    A diagnostic of interference between edits, which the margin against y⁻ cannot see: the
    answer mentions some y⁺ from `pool` (every edit's new answer) other than the prompt's own,
    and not its own. Greedy answers only (one string per prompt). ``None`` for no prompts.
    """
    if len(answers) != len(targets_new):
        raise ValueError(f"{len(answers)} answers for {len(targets_new)} new targets")
    pool = list(dict.fromkeys(pool))
    return fraction(not contains(a, own) and _mentions_other(a, own, pool) for a, own in zip(answers, targets_new))


def _mentions_other(answer: str | None, own: str, pool: list[str]) -> bool:
    """The answer mentions a y⁺ from `pool` other than `own` (the same text normalised is not other)."""
    return any(contains(answer, t) for t in pool if normalise(t) != normalise(own))


def lost_edits(answers: Sequence[str | None], targets_new: Sequence[str], targets_old: Sequence[str | None],
               pool: Iterable[str], took: Sequence[bool] | None = None) -> dict:
    """Where edits that no longer answer y⁺ went: back to y⁻, to another edit's y⁺, or elsewhere.

    Counts over greedy answers: ``edits``, ``kept`` (the answer contains y⁺), ``lost`` and its
    three parts — ``to_old_answer`` (mentions y⁻: the prior won, what DPO's margin guards),
    ``to_another_edit`` (mentions the y⁺ of another edit in `pool`, not y⁻: edits interfering)
    and ``elsewhere``. With `took` (did each edit answer y⁺ right after its own update?), an
    edit that never took is counted as ``never_took``, not as lost: it had nothing to lose.
    """
    if not len(answers) == len(targets_new) == len(targets_old):
        raise ValueError(f"{len(answers)} answers for {len(targets_new)} new and {len(targets_old)} old targets")
    if took is not None and len(took) != len(answers):
        raise ValueError(f"{len(took)} 'took' flags for {len(answers)} answers")
    pool = list(dict.fromkeys(pool))
    out = {"edits": len(answers), "kept": 0, "lost": 0, "to_old_answer": 0, "to_another_edit": 0, "elsewhere": 0}
    if took is not None:
        out["never_took"] = 0
    for i, (a, new, old) in enumerate(zip(answers, targets_new, targets_old)):
        if contains(a, new):
            out["kept"] += 1
            continue
        if took is not None and not took[i]:
            out["never_took"] += 1
            continue
        out["lost"] += 1
        if old is not None and contains(a, old):
            out["to_old_answer"] += 1
        elif _mentions_other(a, new, pool):
            out["to_another_edit"] += 1
        else:
            out["elsewhere"] += 1
    return out


def unchanged(answer: str | None, base_answer: str | None) -> bool:
    """The edited model's answer equals the unedited model's, compared normalised."""
    return normalise(answer) == normalise(base_answer)


def locality(answers: Sequence[str], base_answers: Sequence[str]) -> float | None:
    """Fraction of locality probes whose answer is unchanged from the unedited model's (§5)."""
    if len(answers) != len(base_answers):
        raise ValueError(f"{len(answers)} answers for {len(base_answers)} unedited answers")
    return fraction(unchanged(a, b) for a, b in zip(answers, base_answers))


def repeats(text: str | None, times: int = 3, longest: int = 5) -> bool:
    """Whether the text loops: a run of 1 to `longest` words comes `times` times back to back.

    "physics physics physics" and "is a city. is a city. is a city." loop; "New York, New York" does not.
    Words are those of :func:`normalise` split on whitespace, sentence punctuation stripped from each.
    """
    w = [x for x in (x.strip(_END_PUNCT) for x in normalise(text).split()) if x]
    for n in range(1, longest + 1):
        for i in range(len(w) - times * n + 1):
            if all(w[i + k * n:i + (k + 1) * n] == w[i:i + n] for k in range(1, times)):
                return True
    return False


def keeps_manner(answer: str | None, base_answer: str | None) -> bool:
    """The edited answer keeps the unedited answer's manner: not cut short, not a loop.

    Cut short: fewer words than half the unedited answer's (rounded up), so "Norway" in reply to
    "What is Sven Wollter?" fails where the unedited model wrote a sentence, and "Sven Wollter is
    a Norwegian actor" passes. A loop (:func:`repeats`) fails unless the unedited answer loops too.
    Both answers are read as generated, with the same token budget.
    """
    if repeats(answer) and not repeats(base_answer):
        return False
    return len(normalise(answer).split()) >= math.ceil(len(normalise(base_answer).split()) / 2)


def hijacked(answer: str | None, targets: Iterable[str | None]) -> bool:
    """The answer is one of `targets` (the edits' y⁺) and nothing else, compared normalised.

    "Norway" (or "Norway.") in reply to "What is Sven Wollter?" is hijacked by the edit's y⁺;
    "Sven Wollter is a Norwegian actor" is not (it may still mention it: :func:`new_mention`).
    """
    a = normalise(answer)
    return a != "" and a in {normalise(t) for t in targets}


def new_mention(answer: str | None, base_answer: str | None, target: str | None) -> bool:
    """The answer names y⁺ where the unedited answer did not (:func:`contains`)."""
    return contains(answer, target) and not contains(base_answer, target)


def efficacy(margins: Iterable[float]) -> float | None:
    """Fraction of margins m = log p(y⁺|x) − log p(y⁻|x) that are > 0 (ROME's efficacy score).

    A tie (m = 0) does not count: the model does not prefer y⁺. ``None`` for no margins.
    """
    return fraction(m > 0 for m in margins)


MARGIN_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def margin_stats(margins: Iterable[float]) -> dict:
    """Mean, standard deviation, extremes and the 10/25/50/75/90 % quantiles of the margins.

    Quantiles interpolate linearly (numpy's default). Every value is ``None`` for no margins.
    """
    m = np.asarray([float(x) for x in margins], dtype=np.float64)
    keys = ["mean", "std", "min", *(f"q{round(q * 100)}" for q in MARGIN_QUANTILES), "max"]
    if m.size == 0:
        return {k: None for k in keys}
    values = [m.mean(), m.std(), m.min(), *np.quantile(m, MARGIN_QUANTILES), m.max()]
    return {k: float(v) for k, v in zip(keys, values)}


# ---------------------------------------------------------------------------------------------
# The multi-update protocol (method.md §6)


def check_retention(R: Sequence[Sequence[float]]) -> None:
    """R must be lower-triangular as a list of rows: row k (0-based) holds k + 1 values in [0, 1]."""
    if not R:
        raise ValueError("the retention matrix is empty: evaluate at least one update")
    for k, row in enumerate(R):
        if len(row) != k + 1:
            raise ValueError(f"retention row {k + 1} has {len(row)} values; after update {k + 1} "
                             f"it must hold reliability on updates 1..{k + 1}, i.e. {k + 1} values")
        for j, v in enumerate(row):
            if v is None or not (0.0 <= v <= 1.0) or math.isnan(v):
                raise ValueError(f"R[{k + 1}][{j + 1}] = {v!r} is not a fraction in [0, 1]")


def retention_summary(R: Sequence[Sequence[float]]) -> dict:
    """update efficacy, retention and forgetting of a retention matrix (method.md §6).

    R[k][j] is reliability on update j after update k (0-based, j ≤ k), K = len(R):

    - update_efficacy = mean over k of R[k][k]
    - retention_final = mean over j < K−1 of R[K−1][j]
    - forgetting      = mean over j < K−1 of (R[j][j] − R[K−1][j])

    With a single update there is no earlier update to retain or forget: both are ``None``.
    """
    check_retention(R)
    K = len(R)
    update_efficacy = sum(R[k][k] for k in range(K)) / K
    if K == 1:
        return {"update_efficacy": update_efficacy, "retention_final": None, "forgetting": None}
    last = R[K - 1]
    return {"update_efficacy": update_efficacy,
            "retention_final": sum(last[j] for j in range(K - 1)) / (K - 1),
            "forgetting": sum(R[j][j] - last[j] for j in range(K - 1)) / (K - 1)}


def relative_forgetting_reduction(forgetting: float | None, forgetting_lora: float | None) -> float | None:
    """1 − forgetting_A / forgetting_lora (method.md §6): 0.25 means a quarter less forgetting.

    ``None`` when either is undefined (one update) or LoRA forgot nothing (forgetting_lora ≤ 0),
    where the ratio has no meaning.
    """
    if forgetting is None or forgetting_lora is None or forgetting_lora <= 0:
        return None
    return 1.0 - forgetting / forgetting_lora
