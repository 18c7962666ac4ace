"""Batched generation with the same prompt format as training.

Greedy answers come from a decoding loop of our own (:func:`_greedy_batch`): the tokens every
prompt of a batch starts with (a chat template's system turn, 24 of SmolLM2's ~40 on a
CounterFact prompt) run once and their KV cache serves every row; only the last position's
logits are computed; a row leaves the batch at its answer's end (the end of turn, and for
:func:`generate`'s text in the raw format the end of the line), and the batch stops when every
row has ended. It gives the tokens ``model.generate`` gives (``engine="hf"``, kept for
comparison and used for sampling): the same batches, the argmax of the same model's logits.
Those logits may differ in their last bits (the prefix runs at another shape), which changed
no answer of the bundled model (benchmarks/generation-speed.json) nor of the tiny one's tests.
"""

from __future__ import annotations

import torch

from .prompts import PromptFormat, pad_id
from .scoring import _cache_argument, eval_mode

ENGINES = ("loop", "hf")
MIN_SHARED_PREFIX = 4  # fewer shared tokens than this are not worth a forward of their own


@torch.no_grad()  # not inference_mode: a model may cache tensors (rotary tables) that training reuses
def generate(model, fmt: PromptFormat, prompts: list[str], max_new_tokens: int = 16,
             batch_size: int = 16, progress=None, num_samples: int = 0,
             temperature: float = 1.0, prefill: bool = False, shots=(), engine: str = "loop") -> list[str] | list[list[str]]:
    """Greedy answers to `prompts`, decoded up to the end of turn (chat) or line (raw).

    With `num_samples` > 0, each prompt gets that many answers sampled at `temperature` (no
    top-k or top-p), returned as a list per prompt; seed torch's generator first to repeat them.
    With `prefill`, the answer turn starts with the prompt's own words and the result is their
    continuation (PromptFormat.prefill_ids): a chat model completes the statement. `shots`,
    worked examples (prompt, answer), come before each prompt (PromptFormat.few_shot_ids).
    `engine` "hf" decodes greedily with ``model.generate`` instead of corsa's loop (same answers,
    slower); samples are always drawn by ``model.generate``.
    """
    rows = _generate(model, fmt, prompts, max_new_tokens, batch_size, progress, num_samples, temperature, prefill,
                     shots, engine, answer_ends(fmt))
    texts = [[fmt.decode_answer(r) for r in per_prompt] for per_prompt in rows]
    return texts if num_samples > 0 else [t[0] for t in texts]


@torch.no_grad()  # not inference_mode: a model may cache tensors (rotary tables) that training reuses
def generate_ids(model, fmt: PromptFormat, prompts: list[str], max_new_tokens: int = 16,
                 batch_size: int = 16, engine: str = "loop") -> list[list[int]]:
    """The greedy answers' token ids, up to and including the end-of-turn token when one came."""
    eos = fmt.tokenizer.eos_token_id
    out = []
    for (row,) in _generate(model, fmt, prompts, max_new_tokens, batch_size, engine=engine):
        out.append(row[:row.index(eos) + 1] if eos in row else row)
    return out


def answer_ends(fmt: PromptFormat) -> frozenset[int]:
    """The tokens after which :meth:`PromptFormat.decode_answer` reads nothing more: the end of turn,
    and in the raw format every token whose text holds a line break (the answer is its first line)."""
    eos = fmt.tokenizer.eos_token_id
    ends = {eos} if eos is not None else set()
    if fmt.chat:
        return frozenset(ends)
    cached = getattr(fmt, "_line_ends", None)
    if cached is None:
        tok = fmt.tokenizer
        texts = tok.batch_decode([[i] for i in range(len(tok))], skip_special_tokens=False)
        cached = fmt._line_ends = frozenset(i for i, t in enumerate(texts) if "\n" in t)
    return frozenset(ends | cached)


def _generate(model, fmt, prompts, max_new_tokens, batch_size, progress=None, num_samples=0,
              temperature=1.0, prefill=False, shots=(), engine="loop", ends=None) -> list[list[list[int]]]:
    """The generated token ids, n rows per prompt (n = max(num_samples, 1)), in prompt order.

    A greedy row from the loop stops at the first of `ends` (default: the end of turn), included;
    model.generate's rows run on to `max_new_tokens`, padded after the end of turn.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
    tok = fmt.tokenizer
    pad = pad_id(tok)
    rows: list = [None] * len(prompts)
    n = max(num_samples, 1)
    loop = num_samples == 0 and engine == "loop"
    if ends is None:
        ends = frozenset({tok.eos_token_id}) if tok.eos_token_id is not None else frozenset()
    decoding = (dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0, num_return_sequences=n)
                if num_samples > 0 else dict(do_sample=False, temperature=None, top_p=None, top_k=None))
    # longest first, so batches hold prompts of similar length and padding stays small; the
    # batches are those corsa.distributed.gather_batches deals out (key: -len(prompt))
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    with eval_mode(model) as device:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            ids = [fmt.few_shot_ids(shots, prompts[i]) + (fmt.prefill_ids(prompts[i]) if prefill else []) for i in idx]
            if loop:
                for i, row in zip(idx, _greedy_batch(model, ids, max_new_tokens, pad, ends, device)):
                    rows[i] = [row]
            else:
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


def shared_prefix(ids: list[list[int]]) -> int:
    """How many tokens every prompt starts with, leaving each at least one of its own (its last
    position predicts the answer's first token); 0 for one prompt or fewer than MIN_SHARED_PREFIX."""
    if len(ids) < 2:
        return 0
    m = min(len(x) for x in ids) - 1
    first = ids[0]
    L = 0
    while L < m and all(x[L] == first[L] for x in ids):
        L += 1
    return L if L >= MIN_SHARED_PREFIX else 0


def _greedy_batch(model, ids: list[list[int]], max_new_tokens: int, pad: int, ends, device) -> list[list[int]]:
    """Greedy continuations of one batch of prompts (token ids), each up to and including its first
    token in `ends`, or `max_new_tokens` long.

    The shared prefix runs once and its KV cache is repeated for every row; each prompt's own
    tokens follow it left-padded, so pads sit between the prefix and the rest, masked out, and
    positions count real tokens only, as model.generate counts them. Finished rows leave the
    cache, the mask and the positions.
    """
    B = len(ids)
    rows: list[list[int]] = [[] for _ in range(B)]
    if max_new_tokens <= 0:
        return rows
    name = _cache_argument(model)
    lengths = [len(x) for x in ids]
    L = shared_prefix(ids)
    window = getattr(getattr(model, "config", None), "sliding_window", None)
    if L and window is not None and window < max(lengths) + max_new_tokens:
        L = 0  # the pads between prefix and rest would count against the window
    kw = {}
    if L:
        head = torch.tensor([ids[0][:L]], device=device)
        out = model(input_ids=head, attention_mask=torch.ones_like(head), position_ids=torch.arange(L, device=device)[None],
                    use_cache=True, logits_to_keep=1)
        cache = getattr(out, name)
        cache.batch_repeat_interleave(B)
        kw[name] = cache
    S = max(lengths) - L
    rest = torch.full((B, S), pad, dtype=torch.long)
    rest_mask = torch.zeros((B, S), dtype=torch.long)
    for b, x in enumerate(ids):
        rest[b, S - len(x) + L:] = torch.tensor(x[L:])
        rest_mask[b, S - len(x) + L:] = 1
    positions = L + (rest_mask.cumsum(-1) - 1).clamp_min(0)
    mask = torch.cat([torch.ones((B, L), dtype=torch.long), rest_mask], dim=1).to(device)
    out = model(input_ids=rest.to(device), attention_mask=mask, position_ids=positions.to(device),
                use_cache=True, logits_to_keep=1, **kw)
    cache = getattr(out, name)
    logits = out.logits[:, -1]
    alive = list(range(B))                                   # the batch row of each live row
    pos = torch.tensor(lengths, device=device)[:, None]      # each live row's next position
    for step in range(max_new_tokens):
        nxt = logits.float().argmax(-1)
        keep = []
        for j, t in enumerate(nxt.tolist()):
            rows[alive[j]].append(t)
            if t not in ends:
                keep.append(j)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(alive):
            sel = torch.tensor(keep, device=device)
            cache.batch_select_indices(sel)
            mask, pos, nxt = mask[sel], pos[sel], nxt[sel]
            alive = [alive[j] for j in keep]
        mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, use_cache=True,
                    logits_to_keep=1, **{name: cache})
        cache = getattr(out, name)
        logits = out.logits[:, -1]
        pos = pos + 1
    return rows
