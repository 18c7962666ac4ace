"""The one y⁻ filler: where an edit file gives no old answer, the unedited model's own, as an answer.

DPO pushes y⁻ down against y⁺ (method.md §2), so y⁻ must be the old answer in the form of y⁺:
"Paris", not the sentence a chat model says ("The Eiffel Tower is located in the city of Paris,
France."). A sentence as y⁻ makes the margin meaningless: DPO pushes the sentence down while
"Paris" stays, and efficacy reads 100% beside a reliability of 0%.

How y⁻ is found, always with the adapter disabled, so that a continued adapter's edits never
leak into a later update's y⁻ (an earlier edit's y⁺ would become a negative):

1. **What the model says.** Its greedy reply to the prompt in the edit's prompt format (the chat
   template where the tokenizer has one), and continuations of the prompt's own words: in a
   chat, its completion of them as the start of its answer turn (so it states the fact instead
   of talking around it: "Windows Embedded CE 6.0 is a Microsoft product…" for "… is a product
   of") and their continuation as plain text, without the template ("Toyota Porte is produced
   by" → "Toyota, which has been a leader…"); and, for every model, their plain-text
   continuation after :data:`SHOTS`, a few worked examples of short answers to other prompts,
   one a line ("The capital of Peru is Lima"), where the model answers in a few words as the
   examples do: on CounterFact it holds the old answer about as often as the other outputs
   together, and largely where they do not.
2. **Candidates** (:func:`candidates`): every run of up to :data:`SPAN_WORDS` words inside one
   clause of the reply (after a restatement of the prompt, :func:`_after_restatement`) and of
   each continuation's first line. Not a candidate: a run of two or more words that are all the
   prompt's (its subject said again: "Windows Embedded CE 6.0"; one word of it may be the answer,
   "Fiat" for "Fiat 124 is a product of"); a run that begins or ends with a function word
   (:data:`FUNCTION_WORDS`: "a", "city of", "the United Kingdom"); a number where y⁺ is a word,
   or a word where y⁺ is a number ("5" of "Renault 5"); and a run that holds y⁺ or is held by it
   ("Microsoft product" for y⁺ "Microsoft"): DPO would push y⁺ itself down.
3. **The answer among them** is the one the same unedited model finds most likely as the whole
   answer, read two ways and the log-probabilities added (:func:`answer_scores`):

       score(a) = log p(a, end | SHOTS, prompt) + log p(" " a, end | correction(prompt, y⁺))

   where "end" is any token that ends an answer there (:func:`end_ids`: the end of turn, a full
   stop, a comma, a newline; summed). The first reading is the answer turn after :data:`SHOTS`:
   the examples set the form (a name, not a sentence). The second is plain text that calls the
   edit's new fact false and states the prompt again (:func:`correction`: "False: Danielle
   Darrieux speaks English.\nTrue: Danielle Darrieux speaks"): y⁻ is what the model holds
   *instead of* y⁺, so a thing of y⁺'s kind (a language where y⁺ is one), which keeps a small
   model from answering with a word it copies from the prompt ("Barbier" for "Jules Barbier,
   speaker of"), as the prompt read alone as text lets it. The candidates keep the content to
   what the model said. Counts on CounterFact prompts with their `ground_truth` hidden are in
   benchmarks/README ("How often the filled y⁻ is the old answer"; ``benchmarks/old_answers.py``).
   Spans that begin other spans are scored in the longer one's pass (:func:`_runs`).
4. Where no candidate is left (an empty reply, or every span is y⁺), :func:`short_answer` of the
   reply, its first line, then the end-of-turn token, so y⁻ is never empty and never y⁺.

Where y⁺ is a program in a code block (an API update's task, :mod:`corsa.code`), y⁻ is the
program the unedited model writes, in the same kind of block (:func:`_fill_programs`).
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata

import torch

from . import distributed as dist
from .code.programs import extract_code, fence
from .generate import generate
from .metrics import contains, normalise
from .prompts import check_edit_text, collate_shared, pad_id
from .scoring import autocast, eval_mode, shared_answer_logits
from .unedited import adapter_off

MAX_WORDS = 6
SPAN_WORDS = 4  # a CounterFact, zsRE or MQuAKE answer is one to four words
# Worked examples of the form of an answer (step 3). True, generic, of different kinds (a city, a
# company, a language, a person, a sport, a country); none of them a prompt of the bundled
# benchmarks, so that no benchmark's y⁻ is copied from an example, and none answered by its own
# prompt's words (an example "The Nintendo Switch is made by: Nintendo" taught the model to
# answer with the subject: "Windows Embedded CE 6.0" for "Windows Embedded CE 6.0 is a product of").
SHOTS: tuple[tuple[str, str], ...] = (
    ("The capital of Peru is", "Lima"),
    ("The PlayStation is made by", "Sony"),
    ("The official language of Brazil is", "Portuguese"),
    ("The Starry Night was painted by", "Vincent van Gogh"),
    ("Serena Williams plays the sport of", "tennis"),
    ("Kofi Annan was a citizen of", "Ghana"),
)
# An answer in y⁺'s form (a name, a language, a place) neither begins nor ends with one of these
# English function words: "a", "the United Kingdom", "city of" are no answers ("United Kingdom"
# is a candidate of its own). None of CounterFact's 10,000 old or new answers begins or ends with one.
FUNCTION_WORDS = frozenset(
    "a an the of in on at to for by with from as and or but nor is was are were be been "
    "it its this that these those which who whom whose his her their our your my".split())
SCORE_CHUNK = 64  # candidates scored in one pass: each repeats the prompt's KV cache
# a clause ends at sentence punctuation followed by a space or the end ("3.14" and "1,234" go on),
# at a newline, a quote or a bracket, or a spaced dash
_CLAUSE_END = re.compile(r"[.,;:!?](?=\s|$)|[\n\"“”()\[\]]|\s[-–—]\s")
# "St. Louis", "Dr. Who", "the U.S.": a full stop after one or two capitals is an abbreviation
_ABBREVIATION = re.compile(r"(?:^|[\s.])[A-Z][a-z]?\.$")
_WORD = re.compile(r"\w+", re.UNICODE)
# a word of a span: letters and digits, joined inside by an apostrophe, a dot, "&" or a hyphen
# ("Chaux-de-Fonds", "F.C", "O'Brien"), but not by a possessive's ("Microsoft's" is "Microsoft")
_SPAN_WORD = re.compile(r"\w+(?:(?:['’](?![sS]\b)|[.&-])\w+)*", re.UNICODE)


def first_line(text: str | None) -> str:
    """The first line of a model's answer, stripped ("" for none)."""
    return (text or "").strip().split("\n", 1)[0].strip()


def _words(text: str) -> list[str]:
    return _WORD.findall(normalise(text))


def short_answer(prompt: str, answer: str) -> str:
    """The answer part of a model's `answer` to `prompt`: after a restated prompt, the first clause.

    Pure; the fallback of step 4. Returns "" when nothing is left.
    """
    line = first_line(answer)
    rest = _after_restatement(prompt, line)
    clauses = _clauses(rest)
    words = (clauses[0] if clauses else "").split()
    return " ".join(words[:MAX_WORDS]).strip(" '\"`")


def _clauses(text: str) -> list[str]:
    """`text` cut at its clause boundaries (_CLAUSE_END, skipping abbreviations' full stops); no empty ones."""
    out, start = [], 0
    for m in _CLAUSE_END.finditer(text):
        if m.group() == "." and _ABBREVIATION.search(text[:m.end()]):
            continue
        out.append(text[start:m.start()])
        start = m.end()
    out.append(text[start:])
    return [c.strip() for c in out if c.strip()]


def spans(text: str, max_words: int = SPAN_WORDS) -> list[str]:
    """Every run of 1 … `max_words` consecutive words inside one clause of `text`, as written.

    Pure. A span is the text from its first word's start to its last word's end, so "St. Louis"
    and "Chaux-de-Fonds" keep their punctuation; spans never cross a clause boundary. The parts
    of a hyphenated word are spans too, after it: "French" of "French-born".
    """
    out = []
    for clause in _clauses(text):
        words = [(m.start(), m.end()) for m in _SPAN_WORD.finditer(clause)]
        for i in range(len(words)):
            for j in range(i, min(len(words), i + max_words)):
                out.append(clause[words[i][0]:words[j][1]])
            word = clause[words[i][0]:words[i][1]]
            if "-" in word:
                out += [part for part in word.split("-") if part]
    return out


def candidates(prompt: str, reply: str, completions, target_new: str) -> list[str]:
    """The candidate old answers of step 2, first seen first, without repeats (module docstring). Pure.

    `reply` is read after its restatement of the prompt; `completions` (continuations of the
    prompt's own words) from their start. Each is read to its first line.
    """
    texts = [_after_restatement(prompt, first_line(_nfc(reply)))] + [first_line(_nfc(c)) for c in completions]
    asked = set(_words(prompt))
    seen, out = set(), []
    for c in (span for text in texts for span in spans(text)):
        key = normalise(c)
        if not key or key in seen or contains(c, target_new) or contains(target_new, c):
            continue
        words = _words(c)
        if len(words) > 1 and set(words) <= asked:  # "Windows Embedded CE 6.0": the prompt's subject again
            continue
        if words and (words[0] in FUNCTION_WORDS or words[-1] in FUNCTION_WORDS):  # "a", "city of", "the UK"
            continue
        if _has_letter(c) != _has_letter(target_new):  # y⁺'s form: "5" is no answer where y⁺ is a name
            continue
        seen.add(key)
        out.append(c)
    return out


def _has_letter(text: str) -> bool:
    return any(ch.isalpha() for ch in text)


def _nfc(text: str | None) -> str:
    return unicodedata.normalize("NFC", text or "")


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


def end_ids(tokenizer) -> list[int]:
    """The tokens that end an answer (step 3): the end of turn, and a full stop, a comma or a newline
    where one follows a word as a token of its own."""
    out = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    word = tokenizer("x", add_special_tokens=False).input_ids
    for mark in (".", ",", "\n"):
        ids = tokenizer("x" + mark, add_special_tokens=False).input_ids
        if len(ids) == len(word) + 1 and ids[:-1] == word and ids[-1] not in out:
            out.append(ids[-1])
    # a tokenizer with no end token and no mark of its own: a newline's last token, so there is one
    return out or tokenizer("\n", add_special_tokens=False).input_ids[-1:]


def correction(prompt: str, target_new: str) -> str:
    """The plain text of step 3's second reading: the edit's new fact called false, then the prompt
    again, to be continued by the answer the model holds instead. Pure.

    y⁺ is written on one line, closed by a full stop unless it ends a sentence already ("D.C.",
    "Yahoo!"); with no y⁺ to call false, the prompt alone.
    """
    new = " ".join(target_new.split())
    if not new:
        return prompt
    return f"False: {prompt} {new}{'' if new[-1] in '.!?…' else '.'}\nTrue: {prompt}"


@torch.no_grad()
def answer_scores(model, fmt, prompt: str, answers: list[str], target_new: str) -> torch.Tensor:
    """How likely the unedited model finds each answer as the whole answer (step 3): (len(answers),) on CPU.

    log p_ans(a) + log p_instead(a): the answer turn after :data:`SHOTS`, and the plain text
    :func:`correction` continued by a, each followed by an end (:func:`end_ids`); module
    docstring, step 3.
    """
    ends = end_ids(fmt.tokenizer)
    text = fmt.raw()
    as_answer = _score_ended(model, fmt, fmt.few_shot_ids(list(SHOTS), prompt),
                             [fmt.answer_ids(a, eos=False) for a in answers], ends)
    instead = _score_ended(model, fmt, text.prompt_ids(correction(prompt, target_new)),
                           [text.answer_ids(a) for a in answers], ends)
    return as_answer + instead


def _score_ended(model, fmt, ids: list[int], bodies: list[list[int]], ends: list[int]) -> torch.Tensor:
    """log p(body | ids) + log Σ_e p(e | ids, body) over the ending tokens e, for every body, exactly.

    Where one body begins another ("Microsoft" and "Microsoft Corporation", as most of a
    clause's spans do), only the longer runs: the shorter one's tokens are read off the same
    positions, and its ending off the position after them (the logits there predict every next
    token). Only the :func:`_runs` that begin no other are scored, SCORE_CHUNK to a pass after
    the prompt's KV cache: about a third of the tokens of scoring every span alone.
    """
    runs, where = _runs([b + ends[:1] for b in bodies])
    out = torch.empty(len(bodies))
    with eval_mode(model) as device:
        for s in range(0, len(runs), SCORE_CHUNK):
            batch = collate_shared([ids], [runs[s:s + SCORE_CHUNK]], pad_id(fmt.tokenizer)).to(device)
            with autocast(device):
                logits = shared_answer_logits(model, batch).float()
            norm = logits.logsumexp(-1)  # log p = logit − norm, read only where needed (no (R, K, V) copy)
            for i, (r, n) in enumerate(where):
                if s <= r < s + SCORE_CHUNK:
                    row, z = logits[r - s], norm[r - s]
                    # the body's tokens where the run has them, the ending where the body ends
                    body = row[torch.arange(n, device=device), torch.tensor(bodies[i], dtype=torch.long, device=device)]
                    out[i] = float((body - z[:n]).sum() + row[n, ends].logsumexp(0) - z[n])
    return out


def _runs(closed: list[list[int]]) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """The token runs that score every closed answer (a body and one token after it), and where each is read.

    Pure. Returns (runs, where): where[i] = (r, n) reads answer i's body as the first n tokens of
    runs[r], and what follows it from the position after them. A run is an answer's body with
    its own last token, kept only where no other answer's body begins with that body.
    """
    # in descending order every body comes right after the bodies that begin with it, if any
    bodies = sorted({tuple(a[:-1]): a for a in closed}.items(), reverse=True)
    runs: list[list[int]] = []
    home: dict[tuple, int] = {}
    previous: tuple | None = None
    for body, answer in bodies:
        if previous is not None and previous[:len(body)] == body:
            home[body] = home[previous]
        else:
            home[body] = len(runs)
            runs.append(list(answer))
        previous = body
    return runs, [(home[tuple(a[:-1])], len(a) - 1) for a in closed]


def fill(model, fmt, edits, max_new_tokens: int = 16, batch_size: int = 16) -> list:
    """`edits` with every missing y⁻ set to the unedited model's short answer (module docstring).

    Edits that give y⁻ are returned as they are. Under a launcher the prompts are split across
    workers in the batches of one process, and every worker gets the same edits back.
    """
    for e in edits:  # a prompt and y⁺ are written into the model's inputs below: refused first, by name
        if not e.target_old:
            check_edit_text(fmt, e)
    out = _fill_programs(model, fmt, list(edits), batch_size)
    missing = [i for i, e in enumerate(out) if not e.target_old]
    if not missing:
        return out
    edits = out
    prompts = [edits[i].prompt for i in missing]

    def say(form, prefill=False, shots=()):
        return dist.gather_batches(
            lambda part: generate(model, form, part, max_new_tokens, batch_size, prefill=prefill, shots=shots),
            prompts, batch_size, key=lambda p: -len(p))

    with adapter_off(model):
        replies = say(fmt)
        text = fmt.raw()
        # step 1: a raw model's reply already is the plain-text continuation of the prompt's words
        said = [say(fmt, prefill=True), say(text)] if fmt.chat else []
        completions = list(zip(*said, say(text, shots=SHOTS), strict=True))
        found = [candidates(edits[i].prompt, r, c, edits[i].target_new)
                 for i, r, c in zip(missing, replies, completions, strict=True)]
        chosen = dist.gather_batches(
            lambda part: [int(answer_scores(model, fmt, edits[i].prompt, cs, edits[i].target_new).argmax())
                          if cs else -1 for i, cs in part],
            list(zip(missing, found)), 1)
    out = list(edits)
    for i, reply, cs, k in zip(missing, replies, found, chosen):
        if cs:
            old = cs[k]
        else:  # step 4: y⁻ must differ from y⁺ (the model may already say it)
            new = normalise(edits[i].target_new)
            fallback = [short_answer(edits[i].prompt, reply), first_line(reply)]
            old = next((c for c in fallback if c and normalise(c) != new), fmt.tokenizer.eos_token)
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
