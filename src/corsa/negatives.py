"""Rejected answers beyond y⁻: conflict with other edits, not only with the prior.

On a small model the edits an update loses are rarely lost to their old answer y⁻: most are
answered with *another edit's* y⁺ of the same relation (docs/results.md). DPO's margin against
y⁻ cannot see that third answer, so these negatives put it in front of DPO:

- **interference**: for an edit, the y⁺ of the other edits seen so far whose prompt has the same
  template (the prompt with the subject taken out), or is the same prompt edited before;
- **rivals**: for an edit, the y⁺ of the other edits seen so far that the *unedited* model finds
  most plausible as an answer to its prompt (ranked by the base log-probability of their first
  token), whatever their template: the other edits' answers of the same kind (a language for a
  language question, a city for a city). These are the answers that take an edit's rephrasings
  over: on 60 CounterFact edits in 3 updates, 29 of corsa-lifelong's 31 missed paraphrases
  answered with another edit's y⁺, most of them one of the same kind under another template
  (docs/results.md);
- **online**: the model's current greedy answer to the edit prompt when it does not contain y⁺,
  refreshed every pass (KDPO, Rozner et al., EMNLP 2024, "Knowledge Editing through Direct
  Preference Optimization", uses the model's current output as the rejected answer).

Each becomes one more (y⁺, y⁻ᵢ) pair of the DPO loss (objectives.dpo_loss with M negatives).
"""

from __future__ import annotations

from collections.abc import Callable

from .metrics import contains, normalise
from .records import Edit


def template(edit: Edit) -> str | None:
    """The edit prompt with its subject replaced by {}, normalised; None without a subject in it."""
    if not edit.subject:
        return None
    p, s = normalise(edit.prompt), normalise(edit.subject)
    return p.replace(s, "{}") if s and s in p else None


def interference(edits: list[Edit], pool: list[Edit], limit: int) -> list[list[str]]:
    """For each edit, up to `limit` y⁺ of other edits in `pool` that share its template or prompt.

    The most recent edits of `pool` (its end) come first. An answer that is the edit's own y⁺
    or y⁻ (normalised) is never a negative, nor is the same answer twice.
    """
    by_key: dict[str, list[Edit]] = {}
    for e in reversed(pool):
        for key in {normalise(e.prompt), template(e)} - {None}:
            by_key.setdefault(key, []).append(e)
    out = []
    for e in edits:
        own = {normalise(e.target_new), normalise(e.target_old)}
        found: list[str] = []
        for key in dict.fromkeys([normalise(e.prompt), template(e)]):
            for other in by_key.get(key, []) if key else []:
                answer = normalise(other.target_new)
                if other is not e and answer and answer not in own and answer not in map(normalise, found):
                    found.append(other.target_new)
        out.append(found[:limit])
    return out


def rivals(edits: list[Edit], pool: list[Edit], plausibility: Callable[[int, str], float | None],
           limit: int) -> list[list[str]]:
    """For each edit, up to `limit` y⁺ of the edits in `pool`, the most plausible first.

    `plausibility(i, answer)` is how likely the unedited model finds `answer` for edits[i]'s
    prompt (a log-probability; None: not a plausible answer at all, never a rival). Ties go to
    the most recent edit of `pool`. An answer equal to the edit's own y⁺ or y⁻, or one that
    contains its y⁺ or is contained in it (whole words, normalised), is never its rival: it
    would not be a wrong answer.
    """
    answers: dict[str, str] = {}
    for e in reversed(pool):
        key = normalise(e.target_new)
        if key and key not in answers:
            answers[key] = e.target_new
    out = []
    for i, e in enumerate(edits):
        # rank first (a lookup per answer), then apply the exclusions (a regex each) only until
        # `limit` are found: with 1,000 edits seen, testing every answer would cost seconds per edit
        scored = ((plausibility(i, answer), order, key, answer) for order, (key, answer) in enumerate(answers.items()))
        ranked = sorted((-score, order, key, answer) for score, order, key, answer in scored if score is not None)
        own = {normalise(e.target_new), normalise(e.target_old or "")}
        found: list[str] = []
        for _, _, key, answer in ranked:
            if len(found) == limit:
                break
            if key not in own and not contains(answer, e.target_new) and not contains(e.target_new, answer):
                found.append(answer)
        out.append(found)
    return out


def merge(first: list[list[str]], second: list[list[str]], limit: int) -> list[list[str]]:
    """Per edit, the answers of `first` then those of `second` not already there (normalised), at most `limit`."""
    out = []
    for a, b in zip(first, second):
        seen = {normalise(x) for x in a}
        out.append((a + [x for x in b if normalise(x) not in seen])[:limit])
    return out


def online(answer: str, edit: Edit) -> str | None:
    """The model's greedy `answer` as a negative for `edit`: None when it holds y⁺ or is y⁻ or empty."""
    if not normalise(answer) or contains(answer, edit.target_new) or normalise(answer) == normalise(edit.target_old):
        return None
    return answer
