"""Teacher-forced scoring: log-probabilities of given answers, and the edit margin."""

from __future__ import annotations

import torch

from .prompts import PromptFormat, collate, score


@torch.no_grad()
def answer_logprobs(model, fmt: PromptFormat, pairs: list[tuple[list[int], list[int]]],
                    batch_size: int = 16) -> torch.Tensor:
    """log p(answer | prompt) for token-id pairs, batched by length; returns (N,) on CPU."""
    tok = fmt.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = torch.empty(len(pairs))
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = collate([pairs[i] for i in idx], pad_id).to(device)
        with autocast(device):
            out[idx] = score(model, batch).float().cpu()
    model.train(was_training)
    return out


def margins(model, fmt: PromptFormat, encoded, batch_size: int = 16) -> torch.Tensor:
    """m = log p(y⁺|x) − log p(y⁻|x) for every encoded edit (method.md §1)."""
    pairs = [(e.prompt, e.chosen) for e in encoded] + [(e.prompt, e.rejected) for e in encoded]
    lp = answer_logprobs(model, fmt, pairs, batch_size)
    n = len(encoded)
    return lp[:n] - lp[n:]


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op on CPU, where we train in fp32."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
