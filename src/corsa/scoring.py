"""Teacher-forced scoring: log-probabilities of given answers, and the edit margin."""

from __future__ import annotations

import contextlib

import torch

from .prompts import PromptFormat, collate, collate_shared, pad_id, score, score_shared


@contextlib.contextmanager
def eval_mode(model):
    """Put `model` in eval mode and yield its device; its train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        yield next(model.parameters()).device
    finally:
        model.train(was_training)


@torch.no_grad()
def answer_logprobs(model, fmt: PromptFormat, pairs: list[tuple[list[int], list[int]]],
                    batch_size: int = 16) -> torch.Tensor:
    """log p(answer | prompt) for token-id pairs, batched by length; returns (N,) on CPU."""
    pad = pad_id(fmt.tokenizer)
    out = torch.empty(len(pairs))
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    with eval_mode(model) as device:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = collate([pairs[i] for i in idx], pad).to(device)
            with autocast(device):
                out[idx] = score(model, batch).float().cpu()
    return out


@torch.no_grad()
def margins(model, fmt: PromptFormat, encoded, batch_size: int = 16) -> torch.Tensor:
    """m = log p(y⁺|x) − log p(y⁻|x) for every encoded edit (method.md §1); (N,) on CPU.

    Each prompt runs once and both answers continue from its KV cache; edits are batched by
    prompt length.
    """
    return margins_and_greedy(model, fmt, encoded, batch_size)[0]


@torch.no_grad()
def margins_and_greedy(model, fmt: PromptFormat, encoded, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The margins, and whether y⁺ is each edit's greedy answer (objectives.is_greedy), from one pass."""
    pad = pad_id(fmt.tokenizer)
    out = torch.empty(len(encoded))
    greedy = torch.zeros(len(encoded), dtype=torch.bool)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].prompt))
    with eval_mode(model) as device:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = collate_shared([encoded[i].prompt for i in idx],
                                   [[encoded[i].chosen, encoded[i].rejected] for i in idx], pad).to(device)
            with autocast(device):
                lp, ok = score_shared(model, batch, greedy=True)
            lp = lp.float().cpu()                                        # (B, 2)
            out[idx] = lp[:, 0] - lp[:, 1]
            greedy[idx] = ok[:, 0].cpu()
    return out, greedy


def holds(model, fmt: PromptFormat, encoded, margin_target: float, batch_size: int = 16) -> list[bool]:
    """An edit holds when y⁺ is its greedy answer and its margin exceeds γ (per-edit stopping)."""
    m, greedy = margins_and_greedy(model, fmt, encoded, batch_size)
    return [bool(g) and float(x) > margin_target for x, g in zip(m, greedy)]


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op on CPU, where we train in fp32."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
