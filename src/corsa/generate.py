"""Batched greedy generation (left padding, KV cache) with the same prompt format as training."""

from __future__ import annotations

import torch

from .prompts import PromptFormat


@torch.no_grad()
def generate(model, fmt: PromptFormat, prompts: list[str], max_new_tokens: int = 16,
             batch_size: int = 16, progress=None) -> list[str]:
    """Greedy answers to `prompts`, decoded up to the end of turn (chat) or line (raw)."""
    tok = fmt.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    answers: list[str | None] = [None] * len(prompts)
    # longest first, so batches hold prompts of similar length and padding stays small
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids = [fmt.prompt_ids(prompts[i]) for i in idx]
        T = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), T), dtype=torch.long)
        for b, x in enumerate(ids):
            input_ids[b, T - len(x):] = torch.tensor(x)
            mask[b, T - len(x):] = 1
        out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                             max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             pad_token_id=pad_id, eos_token_id=tok.eos_token_id,
                             temperature=None, top_p=None, top_k=None)
        for b, i in enumerate(idx):
            answers[i] = fmt.decode_answer(out[b, T:].tolist())
        if progress is not None:
            progress.update(len(idx))
    model.train(was_training)
    return answers  # type: ignore[return-value]
