"""The two objectives of CoRSA (method.md §2), on per-sequence answer log-probabilities."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def answer_logprobs(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence log p(y|x) = Σ_t log p(y_t | x, y_<t), summed over answer tokens only.

    logits: (B, K, V) predicting labels (B, K); mask (B, K) is 1 on answer tokens. Computed in
    fp32 so bf16 training does not lose the small differences DPO cares about.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    token_logp = logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (B, K)
    return (token_logp * mask).sum(-1)


def is_greedy(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Whether each sequence is the greedy continuation: every answer token is the argmax (B,).

    Greedy decoding from the prompt then produces exactly these tokens first, so this is the
    generated "the answer starts with y" test at the cost of one teacher-forced forward.
    """
    hit = logits.argmax(-1) == labels
    return (hit | (mask == 0)).all(-1)


def sft_loss(logp_chosen: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """L_SFT = − mean over edits of (1/|y⁺|) log p(y⁺|x)  (token-mean NLL per edit)."""
    return -(logp_chosen / n_tokens.clamp_min(1)).mean()


def dpo_loss(logp_chosen: torch.Tensor, logp_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """Sigmoid DPO (Rafailov et al. 2023, Eq. 7):

    L_DPO = − mean log σ( β[log π(y⁺|x) − log π_ref(y⁺|x)] − β[log π(y⁻|x) − log π_ref(y⁻|x)] ).

    With several rejected answers per prompt (logp_rejected and ref_rejected of shape (B, M),
    `weights` (B, M) marking the real ones), each (y⁺, y⁻_i) is a pair and a prompt's loss is
    the sum over its pairs: L = − mean_b Σ_i w_bi log σ(β[Δ⁺_b − Δ⁻_bi]). With M = 1 this is
    Eq. 7. A sum, not a mean, so that the pair against y⁻ keeps its full weight however many
    further negatives a prompt has: under a mean, two extra negatives cut the push against y⁻ to
    a third, and per-edit stopping (a margin over y⁻ of γ) then needs a third more steps
    (docs/results.md, "Negatives beyond y⁻: rivals").
    """
    if logp_rejected.dim() == 1:
        logp_rejected, ref_rejected = logp_rejected[:, None], ref_rejected[:, None]
    if weights is None:
        weights = torch.ones_like(logp_rejected)
    delta_chosen = (logp_chosen - ref_chosen)[:, None]
    logits = beta * (delta_chosen - (logp_rejected - ref_rejected))
    per_prompt = -(F.logsigmoid(logits) * weights).sum(-1)
    return per_prompt.mean()
