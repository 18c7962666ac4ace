"""Keeping the model's behaviour off the edits: a KL term on anchor prompts.

Training on one-word answers changes how a chat model answers *everything* (docs/results.md:
generated locality 0% for every method). The preservation term keeps the edited model's
next-token distributions equal to the unedited model's on prompts that have nothing to do with
the edits, along the unedited model's own greedy answers to them (self-distillation, as in
knowledge distillation with the teacher's samples):

    L_pres = (1/T) Σ_t KL( p_θ(·|a, s_<t) ‖ p_θ+φ(·|a, s_<t) )  +  w · (1/B) Σ_a KL( p_θ(·|a) ‖ p_θ+φ(·|a) )

over the answer tokens s of every anchor prompt a in the step's anchor batch (T tokens in
all, B anchors), θ the frozen base and φ the adapter. The second term (`preserve_first` w, 0 by
default) weighs each answer's first token on its own: whether an answer about an edited
subject keeps its manner or becomes y⁺ is decided there, and a token mean over the answer
dilutes it (measured on hijacked answers: 1.0–4.3 nats at the first token, 0.14–1.16 as the
mean; docs/results.md). At φ's start (LoRA B = 0) the two distributions are
equal and L_pres = 0. Its gradient, weighted by κ (`EditConfig.preserve`), joins the SFT side:
g_sft = ∇(λ L_SFT + κ L_pres), before PCGrad and SAM.

The anchors are a bundled set of generic requests and questions (`data/anchors.txt`) and,
with `swap_anchors` k, k prompts per edit made of the edit's own prompt with its subject
replaced by another edit's subject ("Gustav Lindau took up work in" → "Larry Stabbins took up
work in"): the edit must not spill over to other subjects asked the same way, which is where
the neighbourhood score shows it leaking. Neither is ever an evaluation probe: any anchor equal
to a prompt, paraphrase, locality or portability question of the edits being trained is dropped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from .unedited import adapter_off
from .errors import DataError
from .files import jsonl_lines, read_text_bounded
from .generate import generate_ids
from . import subjects
from .metrics import normalise
from .prompts import Batch, PromptFormat, collate
from .scoring import answer_logits, autocast

BUNDLED = Path(__file__).parent / "data" / "anchors.txt"
ANSWER_TOKENS = 12  # the first tokens of the unedited answer: its manner shows there, and the KL is not diluted


MAX_ANCHOR_BYTES = 64 * 2**20  # prompts, one per line: far more than any anchor set


def read_anchors(path: str | Path | None = None) -> list[str]:
    """Anchor prompts, one per line (lines starting with # skipped); the bundled set by default."""
    path = Path(path) if path else BUNDLED
    text = read_text_bounded(path, MAX_ANCHOR_BYTES, "the anchor prompts", DataError)
    prompts = [line.strip() for _, line in jsonl_lines(text) if not line.lstrip().startswith("#")]
    if not prompts:
        raise DataError("holds no anchor prompt (one per line)", path=str(path))
    return prompts


def swapped_prompts(edits, subjects_from, k: int, seed: int) -> list[str]:
    """For each edit with a subject in its prompt, up to k prompts with another edit's subject in its place.

    The other subjects are those of `subjects_from` (normalised-different from the edit's own and
    not inside its prompt), drawn with `seed`; each prompt once, in edit order.
    """
    pool = list(dict.fromkeys(e.subject for e in subjects_from if e.subject))
    out: dict[str, None] = {}
    rng = random.Random(seed)
    for e in edits:
        if not e.subject or e.subject not in e.prompt:
            continue
        others = [s for s in pool if normalise(s) != normalise(e.subject) and normalise(s) not in normalise(e.prompt)]
        for s in rng.sample(others, min(k, len(others))):
            out[e.prompt.replace(e.subject, s)] = None
    return list(out)


def subject_prompts(edits, k: int) -> list[str]:
    """For each edit with a subject, k questions about it that do not ask the edited fact.

    Drawn from :data:`corsa.subjects.KEPT` (never the evaluation's wordings), seeded by the edit's
    id, so an edit keeps the same questions in every update and every run; each prompt once.
    """
    out: dict[str, None] = {}
    for e in edits:
        if e.subject and e.subject.strip():
            for q in subjects.questions(e.subject, random.Random(f"keep-subject {e.id}").sample(subjects.KEPT, k)):
                out[q] = None
    return list(out)


def probe_prompts(edits) -> set[str]:
    """Every prompt the evaluation asks of these edits, normalised."""
    out = set()
    for e in edits:
        out.add(normalise(e.prompt))
        out.update(normalise(q) for q in subjects.probes(e))
        out.update(normalise(p) for p in e.paraphrases)
        out.update(normalise(p.prompt) for p in e.locality)
        out.update(normalise(p.prompt) for p in e.portability)
    return out


def without_probes(anchors: list[str], edits) -> list[str]:
    """The anchors that are not evaluation probes of `edits`."""
    probes = probe_prompts(edits)
    return [a for a in anchors if normalise(a) not in probes]


@dataclass
class Anchors:
    """Anchor prompts with the unedited model's own answers, tokenised: (prompt ids, answer ids)."""

    prompts: list[str]
    pairs: list[tuple[list[int], list[int]]]

    def __len__(self) -> int:
        return len(self.pairs)


def prepare(model, fmt: PromptFormat, prompts: list[str], batch_size: int = 16) -> Anchors:
    """The unedited model's greedy answers (adapter off) to the anchor prompts, as training pairs."""
    with adapter_off(model):
        answers = generate_ids(model, fmt, prompts, ANSWER_TOKENS, batch_size)
    pairs = [(fmt.prompt_ids(p), a) for p, a in zip(prompts, answers) if a]
    return Anchors([p for p, a in zip(prompts, answers) if a], pairs)


def kl(base_logp: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor, tokens=None, first: float = 0.0,
       rows=None) -> torch.Tensor:
    """(1/T) Σ_t KL(p_base ‖ p) over the masked positions, plus `first` · (1/B) Σ_b KL at row b's first
    answer token; base_logp and logits (B, K, V), mask (B, K).

    T is the number of masked positions, or `tokens`, and B the number of rows, or `rows` (the
    whole batch's counts, when this is one worker's shard of it: the workers' terms then add up
    to the batch's).
    """
    per_token = token_kl(base_logp, logits)
    out = (per_token * mask).sum() / (mask.sum() if tokens is None else torch.as_tensor(tokens)).clamp_min(1)
    if first:
        out = out + first * first_token_kl(per_token, mask).sum() / (len(mask) if rows is None else rows)
    return out


def first_token_kl(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's KL at its answer's first token: (B,) from (B, K). Answers are left-padded in a batch
    (prompts.collate), so that is the row's first masked position; a row without one gives 0."""
    first = (mask > 0).int().argmax(-1)  # argmax returns the first of equal maxima
    return per_token.gather(1, first[:, None]).squeeze(1) * (mask.sum(-1) > 0)


def token_kl(base_logp: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p_base ‖ p) = Σ_v p_base(v) (log p_base(v) − log p(v)) at every position: (B, K) from (B, K, V)."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # fp32, as for every log-probability corsa scores
    return (base_logp.exp() * (base_logp - logp)).sum(-1)


def batch(anchors: Anchors, idx: list[int], pad: int) -> Batch:
    return collate([anchors.pairs[i] for i in idx], pad)


@torch.no_grad()
def base_logprobs(model, b: Batch) -> torch.Tensor:
    """The unedited model's log-probabilities at the answer positions (adapter off), under the
    same autocast as the edited model's, so the term is exactly 0 on a fresh adapter on a GPU too."""
    with model.disable_adapter(), autocast(b.input_ids.device):
        return torch.log_softmax(answer_logits(model, b).float(), dim=-1)
