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


def sft_loss(logp_chosen: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """L_SFT = − mean over edits of (1/|y⁺|) log p(y⁺|x)  (token-mean NLL per edit)."""
    return -(logp_chosen / n_tokens.clamp_min(1)).mean()


def dpo_loss(logp_chosen: torch.Tensor, logp_rejected: torch.Tensor,
             ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """Sigmoid DPO (Rafailov et al. 2023, Eq. 7):

    L_DPO = − mean log σ( β[log π(y⁺|x) − log π_ref(y⁺|x)] − β[log π(y⁻|x) − log π_ref(y⁻|x)] ).
    """
    logits = beta * ((logp_chosen - ref_chosen) - (logp_rejected - ref_rejected))
    return -F.logsigmoid(logits).mean()
