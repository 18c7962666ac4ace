"""The one y⁻ filler: where an edit file gives no old answer, the unedited model's own, as an answer.

DPO pushes y⁻ down against y⁺ (method.md §2), so y⁻ must be the old answer in the form of y⁺:
"Paris", not the sentence a chat model says ("The Eiffel Tower is located in the city of Paris,
France."). A sentence as y⁻ makes the margin meaningless: DPO pushes the sentence down while
"Paris" stays, and efficacy reads 100% beside a reliability of 0%.

How y⁻ is found, always with the adapter disabled, so that a continued adapter's edits never
leak into a later update's y⁻ (an earlier edit's y⁺ would become a negative):

1. the unedited model's greedy answer to the prompt, in the edit's prompt format (the chat
   template where the tokenizer has one), first line only;
2. :func:`short_answer`: where the answer restates the prompt ("The official language of
   Majorca is Italian."), what follows the restatement; then the first clause (up to the first
   sentence or clause punctuation), at most :data:`MAX_WORDS` words;
3. an answer that leaves nothing (empty, or only a restatement), or that is y⁺ itself (the model
   already says it), falls back to the whole first line, then to the end-of-turn token, so y⁻
   is never empty and never y⁺.
"""

from __future__ import annotations

import dataclasses
import re

from .metrics import normalise

MAX_WORDS = 6
# a clause ends at sentence punctuation followed by a space or the end ("3.14" and "1,234" go on),
# at a newline, a quote or a bracket, or a spaced dash
_CLAUSE_END = re.compile(r"[.,;:!?](?=\s|$)|[\n\"“”()\[\]]|\s[-–—]\s")
# "St. Louis", "Dr. Who", "the U.S.": a full stop after one or two capitals is an abbreviation
_ABBREVIATION = re.compile(r"(?:^|[\s.])[A-Z][a-z]?\.$")
_WORD = re.compile(r"\w+", re.UNICODE)


def _words(text: str) -> list[str]:
    return _WORD.findall(normalise(text))


def short_answer(prompt: str, answer: str) -> str:
    """The answer part of a model's `answer` to `prompt`: after a restated prompt, the first clause.

    Pure; see the module docstring for the rule. Returns "" when nothing is left.
    """
    line = (answer or "").strip().split("\n", 1)[0].strip()
    rest = _after_restatement(prompt, line)
    words = _first_clause(rest).split()
    return " ".join(words[:MAX_WORDS]).strip(" '\"`")


def _first_clause(text: str) -> str:
    """`text` up to its first clause boundary (_CLAUSE_END), skipping abbreviations' full stops."""
    for m in _CLAUSE_END.finditer(text):
        if m.group() == "." and _ABBREVIATION.search(text[:m.end()]):
            continue
        return text[:m.start()].strip()
    return text.strip()


def _after_restatement(prompt: str, line: str) -> str:
    """`line` after the prompt it restates, or `line` whole when it restates none of it.

    A restatement ends with the prompt's closing words: its last three or two words ("The
    official language of Majorca is Italian." restates "Majorca is"), taken at their last
    occurrence; or its last word alone, where every word before it in `line` is a word of the
    prompt ("The twin city of Lyon is Beirut" for "What is the twin city of Lyon? It is").
    """
    words = _words(prompt)
    for n in (3, 2, 1):
        if n > len(words):
            continue
        pattern = r"(?<!\w)" + r"\W+".join(map(re.escape, words[-n:])) + r"(?!\w)"
        found = list(re.finditer(pattern, line, flags=re.IGNORECASE))
        if n == 1:
            found = [m for m in found if set(_words(line[:m.start()])) <= set(words)]
        if found:
            return line[found[-1].end():].strip()
    return line


def fill(model, fmt, edits, max_new_tokens: int = 16, batch_size: int = 16) -> list:
    """`edits` with every missing y⁻ set to the unedited model's short answer (module docstring).

    Edits that give y⁻ are returned as they are. Under a launcher the prompts are split across
    workers in the batches of one process, and every worker gets the same edits back.
    """
    import contextlib

    from . import distributed as dist
    from .generate import generate

    missing = [i for i, e in enumerate(edits) if not e.target_old]
    if not missing:
        return list(edits)
    prompts = [edits[i].prompt for i in missing]
    off = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    with off:
        answers = dist.gather_batches(lambda part: generate(model, fmt, part, max_new_tokens, batch_size),
                                      prompts, batch_size, key=lambda p: -len(p))
    out = list(edits)
    for i, a in zip(missing, answers):
        first_line = (a or "").strip().split("\n", 1)[0].strip()
        # y⁻ must differ from y⁺ (the model may already say it): the next candidate, else the end of turn
        new = normalise(edits[i].target_new)
        old = next((c for c in (short_answer(edits[i].prompt, a), first_line) if c and normalise(c) != new),
                   fmt.tokenizer.eos_token)
        out[i] = dataclasses.replace(edits[i], target_old=old)
    return out
