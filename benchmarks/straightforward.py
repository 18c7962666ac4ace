"""The yardstick: a CoRSA step computed the straightforward way, as the authors' release does.

Same mathematics as `corsa.step.corsa_step` (method.md §3), none of its economies. In every
micro-batch of both SAM passes it

- recomputes the reference log-probabilities (adapter off) for y⁺ and for y⁻;
- runs y⁺ and y⁻ through the policy in two separate forwards;
- runs a third, separate forward for the SFT term;
- takes one backward per objective, each through its own graph;
- asks the model for logits at every position (right padding, prompt tokens masked in the
  loss), the usual way of scoring answers with a causal LM.

It lives in benchmarks/ only, to measure what the engine saves; `tests/test_benchmarks.py`
checks that its gradient equals the engine's.
"""

from __future__ import annotations

import torch

from corsa.step import combine, flat, Gradients
from corsa.objectives import dpo_loss, sft_loss
from corsa.sam import add_flat_, restore_, sam_perturbation, snapshot


def sequence_logprobs(model, pairs: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(answer | prompt) per row from full-sequence logits of a right-padded batch: (B,), and |answer|."""
    seqs = [p + a for p, a in pairs]
    T = max(len(s) for s in seqs)
    device = next(model.parameters()).device
    input_ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), T), dtype=torch.long)
    labels = torch.full((len(seqs), T), -100, dtype=torch.long)
    for b, ((p, a), s) in enumerate(zip(pairs, seqs)):
        input_ids[b, :len(s)] = torch.tensor(s)
        attention[b, :len(s)] = 1
        labels[b, len(p):len(s)] = torch.tensor(a)
    input_ids, attention, labels = input_ids.to(device), attention.to(device), labels.to(device)
    logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits  # (B, T, V)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = labels[:, 1:]
    mask = target != -100
    token_logp = logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (token_logp * mask).sum(-1), mask.sum(-1)


def release_gradients(model, params, cfg, encoded, group, pad_id) -> Gradients:
    """∇L_SFT·λ and ∇L_DPO over a group of micro-batches, one forward per term and answer."""
    n_group = sum(len(mb) for mb in group)
    g_sft = torch.zeros(sum(p.numel() for p in params), device=params[0].device)
    g_dpo = torch.zeros_like(g_sft) if cfg.spec.dpo else None
    for mb in group:
        w = len(mb) / n_group
        chosen = [(encoded[i].prompt, encoded[i].chosen) for i in mb]
        if cfg.spec.dpo:
            rejected = [(encoded[i].prompt, encoded[i].rejected) for i in mb]
            with torch.no_grad(), model.disable_adapter():               # reference, every time
                ref_c, _ = sequence_logprobs(model, chosen, pad_id)
                ref_r, _ = sequence_logprobs(model, rejected, pad_id)
            lp_c, _ = sequence_logprobs(model, chosen, pad_id)           # policy, y⁺
            lp_r, _ = sequence_logprobs(model, rejected, pad_id)         # policy, y⁻
            loss_dpo = dpo_loss(lp_c, lp_r, ref_c, ref_r, cfg.dpo_beta)
            g_dpo += flat(torch.autograd.grad(w * loss_dpo, params, allow_unused=True), params)
        lp_sft, n_tok = sequence_logprobs(model, chosen, pad_id)        # SFT, its own forward
        loss_sft = sft_loss(lp_sft, n_tok)
        g_sft += flat(torch.autograd.grad(w * cfg.sft_weight * loss_sft, params, allow_unused=True), params)
    return Gradients(g_sft, g_dpo)


def straightforward_step(model, params, cfg, encoded, group, pad_id, generator) -> dict:
    """method.md §3 computed the release's way; fills `p.grad` with g' like `corsa_step`."""
    g = combine(release_gradients(model, params, cfg, encoded, group, pad_id), cfg, generator)
    if cfg.sam_rho > 0:
        saved = snapshot(params)
        add_flat_(params, sam_perturbation(g, cfg.sam_rho))
        g = combine(release_gradients(model, params, cfg, encoded, group, pad_id), cfg, generator)
        restore_(params, saved)
    offset = 0
    for p in params:
        p.grad = g[offset:offset + p.numel()].view_as(p).to(p.dtype).clone()
        offset += p.numel()
    return {"grad/norm": g.norm().item()}
