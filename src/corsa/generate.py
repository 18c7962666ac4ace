"""Batched greedy generation (left padding, KV cache) with the same prompt format as training."""

from __future__ import annotations

import torch

from .prompts import PromptFormat, pad_id
from .scoring import eval_mode


@torch.no_grad()
def generate(model, fmt: PromptFormat, prompts: list[str], max_new_tokens: int = 16,
             batch_size: int = 16, progress=None, num_samples: int = 0,
             temperature: float = 1.0, prefill: bool = False, shots=()) -> list[str] | list[list[str]]:
    """Greedy answers to `prompts`, decoded up to the end of turn (chat) or line (raw).

    With `num_samples` > 0, each prompt gets that many answers sampled at `temperature` (no
    top-k or top-p), returned as a list per prompt; seed torch's generator first to repeat them.
    With `prefill`, the answer turn starts with the prompt's own words and the result is their
    continuation (PromptFormat.prefill_ids): a chat model completes the statement. `shots`,
    worked examples (prompt, answer), come before each prompt (PromptFormat.few_shot_ids).
    """
    rows = _generate(model, fmt, prompts, max_new_tokens, batch_size, progress, num_samples, temperature, prefill,
                     shots)
    texts = [[fmt.decode_answer(r) for r in per_prompt] for per_prompt in rows]
    return texts if num_samples > 0 else [t[0] for t in texts]


@torch.no_grad()
def generate_ids(model, fmt: PromptFormat, prompts: list[str], max_new_tokens: int = 16,
                 batch_size: int = 16) -> list[list[int]]:
    """The greedy answers' token ids, up to and including the end-of-turn token when one came."""
    eos = fmt.tokenizer.eos_token_id
    out = []
    for (row,) in _generate(model, fmt, prompts, max_new_tokens, batch_size):
        out.append(row[:row.index(eos) + 1] if eos in row else row)
    return out


def _generate(model, fmt, prompts, max_new_tokens, batch_size, progress=None, num_samples=0,
              temperature=1.0, prefill=False, shots=()) -> list[list[list[int]]]:
    """The generated token ids, n rows per prompt (n = max(num_samples, 1)), in prompt order."""
    tok = fmt.tokenizer
    pad = pad_id(tok)
    rows: list = [None] * len(prompts)
    n = max(num_samples, 1)
    decoding = (dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0, num_return_sequences=n)
                if num_samples > 0 else dict(do_sample=False, temperature=None, top_p=None, top_k=None))
    # longest first, so batches hold prompts of similar length and padding stays small
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    with eval_mode(model) as device:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            ids = [fmt.few_shot_ids(shots, prompts[i]) + (fmt.prefill_ids(prompts[i]) if prefill else []) for i in idx]
            T = max(len(x) for x in ids)
            input_ids = torch.full((len(ids), T), pad, dtype=torch.long)
            mask = torch.zeros((len(ids), T), dtype=torch.long)
            for b, x in enumerate(ids):
                input_ids[b, T - len(x):] = torch.tensor(x)
                mask[b, T - len(x):] = 1
            out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens, num_beams=1,
                                 pad_token_id=pad, eos_token_id=tok.eos_token_id, **decoding)
            for b, i in enumerate(idx):  # sampled rows come n per prompt, in prompt order
                rows[i] = [out[b * n + s, T:].tolist() for s in range(n)]
            if progress is not None:
                progress.update(len(idx))
    return rows
