"""The one y⁻ filler: where an edit file gives no old answer, the unedited model's own, as an answer.

DPO pushes y⁻ down against y⁺ (method.md §2), so y⁻ must be the old answer in the form of y⁺:
"Paris", not the sentence a chat model says ("The Eiffel Tower is located in the city of Paris,
France."). A sentence as y⁻ makes the margin meaningless: DPO pushes the sentence down while
"Paris" stays, and efficacy reads 100% beside a reliability of 0%.

How y⁻ is found, always with the adapter disabled, so that a continued adapter's edits never
leak into a later update's y⁻ (an earlier edit's y⁺ would become a negative):

1. the unedited model's greedy answer to the prompt, in the edit's prompt format (the chat
   template where the tokenizer has one), first line only;
2. where that answer restates the prompt ("The official language of Majorca is Italian."),
   :func:`short_answer`: what follows the restatement, up to the first sentence or clause
   punctuation, at most :data:`MAX_WORDS` words;
3. where it does not (a chat model often starts elsewhere: "Windows Embedded CE 6.0 is a Microsoft
   product that…" for "Windows Embedded CE 6.0 is a product of"), the model is asked to complete
   the prompt itself: its answer turn starts with the prompt's words, and the greedy completion,
   cut by :func:`completion_answer` to its first sentence of at most :data:`COMPLETION_WORDS`
   words, is y⁻ ("Microsoft"). On 96 CounterFact prompts whose `ground_truth` was hidden
   (``benchmarks/old_answers.py``, two samples), this found the old answer in 7 cases against 4
   for the reply's first clause, where the reply itself held it in 6 (counting only records whose
   prompt does not already name the answer);
4. an answer that leaves nothing (empty, or only a restatement), or that is y⁺ itself (the model
   already says it), falls back to the other candidates, the whole first line, then the
   end-of-turn token, so y⁻ is never empty and never y⁺.

Where y⁺ is a program in a code block (an API update's task, :mod:`corsa.code`), y⁻ is the
program the unedited model writes, in the same kind of block (:func:`_fill_programs`).
"""

from __future__ import annotations

import dataclasses
import re

from .adapter import off as adapter_off
from .metrics import normalise

MAX_WORDS = 6
COMPLETION_WORDS = 8
# a clause ends at sentence punctuation followed by a space or the end ("3.14" and "1,234" go on),
# at a newline, a quote or a bracket, or a spaced dash
_CLAUSE_END = re.compile(r"[.,;:!?](?=\s|$)|[\n\"“”()\[\]]|\s[-–—]\s")
# "St. Louis", "Dr. Who", "the U.S.": a full stop after one or two capitals is an abbreviation
_ABBREVIATION = re.compile(r"(?:^|[\s.])[A-Z][a-z]?\.$")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
_WORD = re.compile(r"\w+", re.UNICODE)


def first_line(text: str | None) -> str:
    """The first line of a model's answer, stripped ("" for none)."""
    return (text or "").strip().split("\n", 1)[0].strip()


def _words(text: str) -> list[str]:
    return _WORD.findall(normalise(text))


def short_answer(prompt: str, answer: str) -> str:
    """The answer part of a model's `answer` to `prompt`: after a restated prompt, the first clause.

    Pure; see the module docstring for the rule. Returns "" when nothing is left.
    """
    line = first_line(answer)
    rest = _after_restatement(prompt, line)
    words = _first_clause(rest).split()
    return " ".join(words[:MAX_WORDS]).strip(" '\"`")


def completion_answer(completion: str) -> str:
    """The answer in a completion of the prompt's own words: its first sentence, at most COMPLETION_WORDS words.

    Pure. A sentence, not a clause: a completion starts with the answer ("a mix of faiths,
    including Buddhism"), so there is no restatement to cut and a comma is rarely its end.
    """
    line = first_line(completion)
    for m in _SENTENCE_END.finditer(line):
        if m.group() == "." and _ABBREVIATION.search(line[:m.end()]):
            continue
        line = line[:m.start()]
        break
    return " ".join(line.split()[:COMPLETION_WORDS]).strip(" '\"`")


def restates(prompt: str, answer: str) -> bool:
    """Whether the first line of `answer` restates `prompt`'s closing words (see _after_restatement)."""
    line = first_line(answer)
    return _after_restatement(prompt, line) != line


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
    from . import distributed as dist
    from .generate import generate

    out = _fill_programs(model, fmt, list(edits), batch_size)
    missing = [i for i, e in enumerate(out) if not e.target_old]
    if not missing:
        return out
    edits = out
    prompts = [edits[i].prompt for i in missing]
    with adapter_off(model):
        answers = dist.gather_batches(lambda part: generate(model, fmt, part, max_new_tokens, batch_size),
                                      prompts, batch_size, key=lambda p: -len(p))
        # a chat reply that does not restate the prompt: ask for the completion of the prompt itself
        # (a raw model's answer already is one)
        elsewhere = [p for p, a in zip(prompts, answers) if fmt.chat and not restates(p, a)]
        completions = dict(zip(elsewhere, dist.gather_batches(
            lambda part: generate(model, fmt, part, max_new_tokens, batch_size, prefill=True),
            elsewhere, batch_size, key=lambda p: -len(p)))) if elsewhere else {}
    out = list(edits)
    for i, a in zip(missing, answers):
        prompt = edits[i].prompt
        candidates = [short_answer(prompt, a), first_line(a)]
        if prompt in completions:
            candidates.insert(0, completion_answer(completions[prompt]))
        # y⁻ must differ from y⁺ (the model may already say it): the next candidate, else the end of turn
        new = normalise(edits[i].target_new)
        old = next((c for c in candidates if c and normalise(c) != new), fmt.tokenizer.eos_token)
        out[i] = dataclasses.replace(edits[i], target_old=old)
    return out


PROGRAM_TOKENS = 320  # a program's y⁻: the unedited model's whole program, not its first words


def is_program(answer: str) -> bool:
    """Whether an answer is a program in a code block (the form of a CodeUpdateArena y⁺)."""
    return answer.lstrip().startswith("```")


def _fill_programs(model, fmt, edits: list, batch_size: int) -> list:
    """The y⁻ of edits whose y⁺ is a program: the unedited model's greedy program, in a code block.

    The same form as y⁺ (one ```python block, :func:`corsa.code.programs.fence`), from up to
    :data:`PROGRAM_TOKENS` tokens with the adapter off; where the model writes no code, or the
    reference itself, y⁻ is ``pass`` in a block: a program that does nothing.
    """
    from . import distributed as dist
    from .code.programs import extract_code, fence
    from .generate import generate

    missing = [i for i, e in enumerate(edits) if not e.target_old and is_program(e.target_new)]
    if not missing:
        return edits
    prompts = [edits[i].prompt for i in missing]
    with adapter_off(model):
        answers = dist.gather_batches(lambda part: generate(model, fmt, part, PROGRAM_TOKENS, batch_size),
                                      prompts, batch_size, key=lambda p: -len(p))
    for i, a in zip(missing, answers):
        code = extract_code(a).strip()
        old = fence(code) if code and normalise(fence(code)) != normalise(edits[i].target_new) else fence("pass")
        edits[i] = dataclasses.replace(edits[i], target_old=old)
    return edits
