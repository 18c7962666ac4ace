"""Teacher-forced scoring: log-probabilities of given answers (one batch or many), and the edit margin."""

from __future__ import annotations

import contextlib
import inspect

import torch

from . import distributed as dist
from .objectives import answer_logprobs, is_greedy
from .prompts import Batch, PromptFormat, SharedBatch, collate, collate_shared, pad_id


def answer_logits(model, batch: Batch) -> torch.Tensor:
    """The logits at the positions that predict the answer tokens: (B, K, V)."""
    T, K = batch.input_ids.shape[1], batch.labels.shape[1]
    # The logit at position t predicts token t+1: positions T-K-1 … T-2 predict the answer, and
    # the last token is only a label, never an input. An index tensor (not an int) makes the
    # kept hidden states one contiguous block, so the vocabulary projection is one matrix
    # product rather than a batched one over strided rows (several times slower on CPU).
    keep = torch.arange(T - K - 1, T - 1, device=batch.input_ids.device)
    out = model(input_ids=batch.input_ids[:, :-1], attention_mask=batch.attention_mask[:, :-1],
                position_ids=batch.position_ids[:, :-1], logits_to_keep=keep, use_cache=False)
    return out.logits


def score(model, batch: Batch) -> torch.Tensor:
    """log p(answer | prompt) for every row of the batch, summed over answer tokens: (B,)."""
    return answer_logprobs(answer_logits(model, batch), batch.labels, batch.label_mask)


def score_shared(model, batch: SharedBatch, greedy: bool = False):
    """log p(answer | prompt) for every answer of every prompt: (B, n).

    With `greedy`, also whether each answer is the greedy continuation (every answer token is
    the argmax): (B, n) booleans, returned as a second value.

    The prompts run once; all n answers continue from their KV cache, so with chosen and
    rejected answers the prompt tokens (most of a CounterFact sequence) are not computed twice.
    The tokens every prompt starts with (a chat template's system turn: 24 of SmolLM2's 38 on a
    CounterFact prompt) run once for the whole batch (`shared_prefix`). Gradients flow through
    the caches into the prompt's activations, as in one long forward.
    """
    n = batch.n_answers
    logits = shared_answer_logits(model, batch)
    mask = batch.answer_mask.to(logits.dtype)
    lp = answer_logprobs(logits, batch.answer_ids, mask).view(-1, n)
    if greedy:
        return lp, is_greedy(logits, batch.answer_ids, mask).view(-1, n)
    return lp


def shared_answer_logits(model, batch: SharedBatch) -> torch.Tensor:
    """The logits that predict every answer token, each answer after its prompt's KV cache: (B·n, K, V).

    Row b·n + j is prompt b's answer j; position k predicts answer token k (score_shared's pass).
    """
    n, K = batch.n_answers, batch.answer_ids.shape[1]
    device = batch.prompt_ids.device
    name = _cache_argument(model)
    first, cache, mask = _prompt_pass(model, batch, name)
    first = first.repeat_interleave(n, 0)                               # predicts answer token 0
    if K == 1:
        return first
    cache.batch_repeat_interleave(n)
    # answer tokens 0 … K-2 are the inputs that predict tokens 1 … K-1
    mask = torch.cat([mask.repeat_interleave(n, 0), batch.answer_mask[:, :-1]], dim=1)
    start = batch.prompt_mask.sum(-1, keepdim=True).repeat_interleave(n, 0)
    positions = start + torch.arange(K - 1, device=device)
    rest = model(input_ids=batch.answer_ids[:, :-1], attention_mask=mask, position_ids=positions,
                 use_cache=True, **{name: cache}).logits
    return torch.cat([first, rest], dim=1)                              # (B·n, K, V)


MIN_SHARED_PREFIX = 4  # fewer shared tokens than this are not worth a second forward


def shared_prefix(batch: SharedBatch) -> int:
    """How many tokens every prompt of the batch starts with, leaving each at least one of its own.

    0 for a single prompt, or when the shared part is shorter than MIN_SHARED_PREFIX.
    """
    lengths = batch.prompt_mask.sum(-1)
    B, P = batch.prompt_ids.shape
    m = int(lengths.min()) - 1  # every prompt keeps a token of its own: its last logit is the answer's first
    if B < 2 or m < MIN_SHARED_PREFIX:
        return 0
    starts = (P - lengths).tolist()  # left-padded: row b's prompt begins at column P − len_b
    heads = torch.stack([batch.prompt_ids[b, s:s + m] for b, s in enumerate(starts)])
    same = (heads == heads[:1]).all(0).long()
    L = int(same.cumprod(0).sum())
    return L if L >= MIN_SHARED_PREFIX else 0


def _prompt_pass(model, batch: SharedBatch, name: str):
    """Run the prompts: the logits that predict each answer's first token (B, 1, V), the KV
    cache, and the attention mask over the cached positions (B, cached length).

    With a shared prefix of L tokens, the prefix runs once and its cache is repeated for every
    prompt; each prompt's own tokens follow it, left-padded, so the pads sit between the prefix
    and the prompt's rest, masked out, and the positions run on from L as in the full prompt.
    """
    P, device = batch.prompt_ids.shape[1], batch.prompt_ids.device
    L = shared_prefix(batch)
    if not L:
        out = model(input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask, position_ids=batch.prompt_positions,
                    logits_to_keep=torch.tensor([P - 1], device=device), use_cache=True)
        return out.logits, getattr(out, name), batch.prompt_mask
    B = batch.prompt_ids.shape[0]
    lengths = batch.prompt_mask.sum(-1)
    first = int(P - lengths[0])                    # where prompt 0 begins (left padding)
    head = batch.prompt_ids[:1, first:first + L]
    out = model(input_ids=head, attention_mask=torch.ones_like(head), position_ids=torch.arange(L, device=device)[None],
                use_cache=True)
    cache = getattr(out, name)
    cache.batch_repeat_interleave(B)
    # each prompt without its first L tokens, left-padded again to the longest rest
    S = int(lengths.max()) - L
    rest_ids = torch.full((B, S), int(batch.prompt_ids[0, 0]), dtype=batch.prompt_ids.dtype, device=device)
    rest_mask = torch.zeros((B, S), dtype=batch.prompt_mask.dtype, device=device)
    for b, n_own in enumerate((lengths - L).tolist()):
        rest_ids[b, S - n_own:] = batch.prompt_ids[b, P - n_own:]
        rest_mask[b, S - n_own:] = 1
    positions = L + (rest_mask.cumsum(-1) - 1).clamp_min(0)
    mask = torch.cat([torch.ones(B, L, dtype=rest_mask.dtype, device=device), rest_mask], dim=1)
    out = model(input_ids=rest_ids, attention_mask=mask, position_ids=positions,
                logits_to_keep=torch.tensor([S - 1], device=device), use_cache=True, **{name: cache})
    return out.logits, getattr(out, name), mask


def _cache_argument(model) -> str:
    """The KV cache's name in forward() and its output: `cache` in newer transformers, else `past_key_values`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


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
def score_pairs(model, fmt: PromptFormat, pairs: list[tuple[list[int], list[int]]],
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


@torch.no_grad()
def next_token_logprobs(model, fmt: PromptFormat, prompts: list[list[int]], batch_size: int = 16,
                        top: int = 1024) -> list[dict[int, float]]:
    """log p(first answer token | prompt) of each prompt's `top` most likely tokens: one dict per prompt.

    One prompt pass per batch (the answer's first token is predicted by the prompt's last
    position), so this costs what the prompt part of a scoring pass costs. Tokens outside the
    top are left out: they are not plausible answers of the prompt.
    """
    pad = pad_id(fmt.tokenizer)
    out: list[dict[int, float]] = [{} for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    with eval_mode(model) as device:
        name = _cache_argument(model)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = collate_shared([prompts[i] for i in idx], [[[pad]] for _ in idx], pad).to(device)
            with autocast(device):
                first = _prompt_pass(model, batch, name)[0]
            lp = torch.log_softmax(first[:, -1].float(), dim=-1)
            values, ids = lp.topk(min(top, lp.shape[-1]), dim=-1)
            for row, i in enumerate(idx):
                out[i] = dict(zip(ids[row].tolist(), values[row].tolist()))
    return out


def holds(model, fmt: PromptFormat, encoded, margin_target: float, batch_size: int = 16) -> list[bool]:
    """An edit holds when y⁺ is its greedy answer and its margin exceeds γ (per-edit stopping)."""
    m, greedy = margins_and_greedy(model, fmt, encoded, batch_size)
    return [bool(g) and float(x) > margin_target for x, g in zip(m, greedy)]


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op on CPU, where we train in fp32."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


class BaseScores:
    """log p_base(answer | prompt) of token-id pairs, scored once and kept across updates.

    The base model is frozen, so a pair's score under the base (adapter off) never changes:
    a lifelong update, which replays every earlier edit, scores only its new pairs instead of
    the reference of every edit it holds (docs/results.md, "Edits that last": without it the
    reference was 14% of update 10's training time on the 10 × 10 stream). A value is the one
    the pair got in the batch it was first scored in, so it can differ from a fresh score by
    float rounding (a different batch pads differently), never more.
    """

    def __init__(self):
        self._lp: dict[tuple[tuple[int, ...], tuple[int, ...]], float] = {}
        self._next: dict[tuple[int, ...], dict[int, float]] = {}

    def __len__(self) -> int:
        return len(self._lp)

    @staticmethod
    def _kept(store: dict, model, keys: list, compute) -> list:
        """store[k] for every key, computing (adapter off) only the keys not seen before, each once."""
        todo = list(dict.fromkeys(k for k in keys if k not in store))
        if todo:
            with model.disable_adapter():
                store.update(zip(todo, compute(todo)))
        return [store[k] for k in keys]

    def of(self, model, fmt: PromptFormat, pairs: list[tuple[list[int], list[int]]], batch_size: int) -> torch.Tensor:
        """log p_base of every pair, (N,): the pairs not seen before are scored, split across workers."""
        scored = lambda part: score_pairs(model, fmt, part, batch_size).tolist()  # noqa: E731
        lp = self._kept(self._lp, model, [(tuple(p), tuple(a)) for p, a in pairs],
                        lambda todo: dist.gather_sharded(scored, [(list(p), list(a)) for p, a in todo]))
        return torch.tensor(lp, dtype=torch.float32)

    def stored(self, pairs: list[tuple[list[int], list[int]]]) -> torch.Tensor:
        """log p_base of pairs scored before (by :meth:`of`), (N,), without a model: inside a training step."""
        return torch.tensor([self._lp[(tuple(p), tuple(a))] for p, a in pairs], dtype=torch.float32)

    def next_token(self, model, fmt: PromptFormat, prompts: list[list[int]], batch_size: int) -> list[dict[int, float]]:
        """log p_base of each prompt's most likely first answer tokens (scoring.next_token_logprobs), kept too."""
        scored = lambda part: next_token_logprobs(model, fmt, part, batch_size)  # noqa: E731
        # whole batches per worker, as one process cuts them: the scores decide a ranking, so they
        # must be bit-identical whatever the number of workers
        return self._kept(self._next, model, [tuple(p) for p in prompts],
                          lambda todo: dist.gather_batches(scored, [list(k) for k in todo], batch_size, key=len))
