"""One CoRSA step (method.md §3), read top to bottom: the DPO reference, the two objectives'
gradients, their combination (PCGrad or a sum), the SAM perturbation and the gradient there,
and the preservation term beside SFT. The loop around it is :mod:`corsa.engine`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import distributed as dist
from . import preserve
from .config import EditConfig
from .objectives import dpo_loss, sft_loss
from .pcgrad import COMBINERS, coefficients, cosine
from .prompts import Encoded, PromptFormat, collate_shared
from .sam import add_flat_, restore_, sam_perturbation, snapshot
from .scoring import BaseScores, autocast, score_pairs, score_shared


@dataclass
class Reference:
    """log p_ref(y⁺|x) and log p_ref(y⁻|x) for every edit of the update, computed once (§2).

    extra[i] holds log p_ref of edit i's further rejected answers (Encoded.extra), in order;
    they are always the base model's, taken from `base`.
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    extra: list[torch.Tensor] = field(default_factory=list)
    base: BaseScores = field(default_factory=BaseScores)


@dataclass
class Preservation:
    """The anchors of the preservation term (corsa.preserve) and the base log-probs of a step's batch."""

    anchors: object                 # preserve.Anchors
    weight: float                   # κ
    batch_size: int
    idx: list[int] | None = None    # this step's anchors
    batch: object = None
    base_logp: torch.Tensor | None = None
    first: float = 0.0              # w, the weight of each anchor's first answer token (preserve_first)


@dataclass
class Gradients:
    """The flat gradients of one pass over an accumulation group, and what was seen on the way."""

    sft: torch.Tensor
    dpo: torch.Tensor | None
    stats: dict = field(default_factory=dict)


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def flat(grads, params) -> torch.Tensor:
    """Concatenate per-parameter gradients (None → zeros) into one vector."""
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                      for g, p in zip(grads, params)])


def compute_reference(model, fmt: PromptFormat, encoded: list[Encoded], cfg: EditConfig,
                      batch_size: int, base: BaseScores | None = None, which=None,
                      ref: Reference | None = None) -> Reference:
    """Reference log-probabilities: the base model (adapter off) or the model as it stands now.

    Under 'base' the scores come from `base` (kept across updates: only pairs it has not seen
    are scored), and only the edits `which` (default: all) are scored, into `ref` when given:
    an edit that does not train needs none, so a lifelong update scores its resting edits only
    once one of them is lost and trains (train_update), and the entry of an unscored edit is
    NaN, which a step that used it would report (check_finite). Under 'previous' every edit is
    scored at once, before the adapter moves. Under data parallelism each worker scores its
    shard of the pairs and every worker receives all of them.
    """
    base = BaseScores() if base is None else base
    n = len(encoded)
    if ref is None:
        nan = torch.full((n,), float("nan"))
        ref = Reference(nan, nan.clone(), [torch.empty(0) for _ in encoded], base)
    if cfg.reference != "base":
        which = range(n)
    todo = [i for i in (range(n) if which is None else which) if torch.isnan(ref.chosen[i])]
    if not todo:
        return ref
    pairs = [(encoded[i].prompt, encoded[i].chosen) for i in todo] + [(encoded[i].prompt, encoded[i].rejected)
                                                                       for i in todo]
    if cfg.reference == "base":
        lp = base.of(model, fmt, pairs, batch_size)
    else:
        scored = lambda part: score_pairs(model, fmt, part, batch_size).tolist()  # noqa: E731
        lp = torch.tensor(dist.gather_sharded(scored, pairs))
    ref.chosen[todo], ref.rejected[todo] = lp[:len(todo)], lp[len(todo):]
    score_negatives(model, fmt, encoded, ref, todo, batch_size)
    if cfg.value("rephrase_dpo"):
        score_wordings(model, fmt, encoded, base, todo, batch_size)
    return ref


def wording_pairs(enc: Encoded) -> list[tuple[list[int], list[int]]]:
    """(wording, answer) for each of an edit's other wordings and each of y⁺, y⁻ and its negatives."""
    return [(w, a) for w in enc.rephrased for a in (enc.chosen, enc.rejected, *enc.extra)]


def score_wordings(model, fmt: PromptFormat, encoded: list[Encoded], base: BaseScores, which, batch_size: int) -> None:
    """Score under the base model every pair a step may draw for the edits `which` (EditConfig.rephrase_dpo):
    the step reads them from `base` (BaseScores.stored), and a pair scored in an earlier update is not scored again."""
    base.of(model, fmt, [pair for i in which for pair in wording_pairs(encoded[i])], batch_size)


def score_negatives(model, fmt, encoded: list[Encoded], ref: Reference, which, batch_size: int) -> None:
    """Fill ref.extra for the edits `which` with the base model's log p of their extra negatives.

    Negatives are always scored by the base model (adapter off): online ones appear during
    training, when no other reference is at hand (EditConfig refuses them with 'previous').
    """
    which = [i for i in which if encoded[i].extra]
    pairs = [(encoded[i].prompt, a) for i in which for a in encoded[i].extra]
    if not pairs:
        return
    lp = ref.base.of(model, fmt, pairs, batch_size)
    at = 0
    for i in which:
        k = len(encoded[i].extra)
        ref.extra[i] = lp[at:at + k]
        at += k


def objective_gradients(model, params, cfg: EditConfig, encoded: list[Encoded], ref: Reference | None,
                        group: list[list[int]], pad: int, pres: Preservation | None = None,
                        mix: tuple[float, float] | None = None, rephrased: dict | None = None) -> Gradients:
    """∇(λL_SFT + κL_pres) and ∇L_DPO over a group of micro-batches, as one big batch would give them.

    With `mix` = (a, b) it takes ONE backward, of a·L_DPO + b·(λL_SFT + κL_pres), and returns
    that gradient as `sft` (and `dpo` None): the perturbed pass of `sharpness="reuse"`.

    Chosen and rejected answers go through ONE forward, which runs each prompt once and
    continues every answer (y⁺, y⁻ and any extra negatives) from its KV cache; both losses come
    from it, and each gradient is one backward through that shared graph. Micro-batch losses
    are weighted by their share of the group's edits, so accumulation equals the large-batch
    mean exactly. The preservation term (`pres`, corsa.preserve) is computed once per group on
    the step's anchors and joins the SFT side, and so does the SFT loss of y⁺ after the step's
    other wordings of each edit's prompt (`rephrased`: edit index → prompt ids, drawn in
    corsa_step; EditConfig.rephrase): λ·(1/|group|) Σ_edits mean over its wordings of the
    token-mean NLL, an edit without wordings adding 0, so that it too is the same however the
    group is split into micro-batches or shards.

    Data parallel: `group` is the step's global group, the same on every worker. Each worker
    takes its shard of every micro-batch (edits r::world), weights it by its share of the
    *global* group, and the sum over workers (one all-reduce per objective) is then exactly the
    gradient one process gets. Both objectives are reduced here, before PCGrad and before the
    SAM norm, so every worker leaves with identical global g_sft and g_dpo (method.md §3).
    """
    spec = cfg.spec
    device = params[0].device
    n_group = sum(len(mb) for mb in group)
    if cfg.value("edit_weight") == "slot":  # a step with fewer edits than its slots pulls them less (method.md §8)
        n_group = max(n_group, cfg.batch_size * cfg.grad_accum)
    g_sft = torch.zeros(sum(p.numel() for p in params), device=device)
    g_dpo = torch.zeros_like(g_sft) if spec.dpo and mix is None else None
    a_dpo, b_sft = mix if mix is not None else (1.0, 1.0)
    stats = {"loss/sft": 0.0}
    if rephrased is not None:
        stats["loss/rephrase"] = 0.0
        if spec.dpo and cfg.value("rephrase_dpo"):
            stats["loss/rephrase_dpo"] = 0.0
    if spec.dpo:
        stats.update({"loss/dpo": 0.0, "rewards/margins": 0.0, "logps/chosen": 0.0, "logps/rejected": 0.0})
    for mb in group:
        mb = dist.shard(mb)                                              # all of it in one process
        if not mb:
            continue
        w = len(mb) / n_group
        if spec.dpo:  # the prompt runs once; y⁺, y⁻ and the negatives all continue from its KV cache
            M, answers, weights = dpo_answers([encoded[i] for i in mb], device)
            batch = collate_shared([encoded[i].prompt for i in mb], answers, pad).to(device)
            with autocast(device):
                lp = score_shared(model, batch)                          # (B, 1 + M)
            lp_chosen, lp_rejected = lp[:, 0], lp[:, 1:]
            ref_rejected = torch.stack([_reference_rejected(ref, i, M) for i in mb]).to(device)
            n_chosen = batch.answer_mask[::1 + M].sum(-1)
        else:  # the same layout with y⁺ alone, so a shared prompt prefix runs once here too
            batch = collate_shared([encoded[i].prompt for i in mb], [[encoded[i].chosen] for i in mb], pad).to(device)
            with autocast(device):
                lp_chosen = score_shared(model, batch)[:, 0]             # (B,)
            n_chosen = batch.answer_mask.sum(-1)
        loss_sft = sft_loss(lp_chosen, n_chosen)
        stats["loss/sft"] += w * loss_sft.item()
        if spec.dpo:
            loss_dpo = dpo_loss(lp_chosen, lp_rejected, ref.chosen[mb].to(device), ref_rejected, cfg.dpo_beta,
                                weights)
            if mix is None:
                g_dpo += flat(torch.autograd.grad(w * loss_dpo, params, retain_graph=True, allow_unused=True), params)
            stats["loss/dpo"] += w * loss_dpo.item()
            stats["rewards/margins"] += w * (lp_chosen - lp_rejected[:, 0]).mean().item()
            stats["logps/chosen"] += w * lp_chosen.mean().item()
            stats["logps/rejected"] += w * lp_rejected[:, 0].mean().item()
        loss = b_sft * w * cfg.sft_weight * loss_sft
        if spec.dpo and mix is not None:
            loss = loss + a_dpo * w * loss_dpo
        rows = [(i, p, 1 / len(rephrased[i])) for i in mb for p in (rephrased or {}).get(i, ())]
        if rows:  # y⁺ after other wordings of the prompt: per edit the mean over its wordings, each edit 1/|group|
            share = torch.tensor([sh for _, _, sh in rows], device=device)
            if with_dpo := spec.dpo and cfg.value("rephrase_dpo"):  # y⁺ against y⁻ and the negatives there too
                M, answers, weights = dpo_answers([encoded[i] for i, _, _ in rows], device)
            else:
                answers = [[encoded[i].chosen] for i, _, _ in rows]
            other = collate_shared([p for _, p, _ in rows], answers, pad).to(device)
            with autocast(device):
                lp_other = score_shared(model, other)                     # (R, 1) or (R, 1 + M)
            n_tokens = other.answer_mask[::lp_other.shape[1]].sum(-1).clamp_min(1)
            loss_other = (-lp_other[:, 0] / n_tokens * share).sum() / n_group
            stats["loss/rephrase"] += loss_other.item()
            loss = loss + b_sft * cfg.sft_weight * loss_other
            if with_dpo:
                pairs = [(p, a) for (_, p, _), row in zip(rows, answers) for a in row]
                ref_other = ref.base.stored(pairs).view(len(rows), 1 + M).to(device)
                # dpo_loss is the mean over rows of each row's sum over its pairs: × R/|group| and the row's
                # share make it Σ_edits 1/|group| · mean over its wordings, as for SFT
                loss_dpo_other = dpo_loss(lp_other[:, 0], lp_other[:, 1:], ref_other[:, 0], ref_other[:, 1:],
                                          cfg.dpo_beta, weights * share[:, None]) * len(rows) / n_group
                stats["loss/rephrase_dpo"] += loss_dpo_other.item()
                if mix is None:
                    g_dpo += flat(torch.autograd.grad(loss_dpo_other, params, retain_graph=True, allow_unused=True),
                                  params)
                else:
                    loss = loss + a_dpo * loss_dpo_other
        g_sft += flat(torch.autograd.grad(loss, params, allow_unused=True), params)
    if pres is not None and pres.weight > 0:
        loss = preservation_loss(model, pres, device)
        stats["loss/preserve"] = 0.0 if loss is None else loss.item()
        if loss is not None:
            g_sft += flat(torch.autograd.grad(b_sft * pres.weight * loss, params, allow_unused=True), params)
    dist.all_reduce_sum_(g_sft)
    if g_dpo is not None:
        dist.all_reduce_sum_(g_dpo)
    if dist.world_size() > 1:  # the logged losses, too, are the global group's
        summed = dist.all_reduce_sum_(torch.tensor(list(stats.values()), dtype=torch.float64, device=device))
        stats = dict(zip(stats, summed.tolist()))
    return Gradients(g_sft, g_dpo, stats)


def dpo_answers(encs: list[Encoded], device) -> tuple[int, list[list[list[int]]], torch.Tensor]:
    """M and each prompt's answers for one shared forward: y⁺, y⁻, its negatives, then y⁻ repeated up to
    1 + M (a prompt with fewer negatives than the most), and the (B, M) weights, 1 on the real rejected ones."""
    M = 1 + max(len(e.extra) for e in encs)
    rejected = [[e.rejected, *e.extra] for e in encs]
    weights = torch.tensor([[1.0] * len(r) + [0.0] * (M - len(r)) for r in rejected], device=device)
    return M, [[e.chosen, *r, *[e.rejected] * (M - len(r))] for e, r in zip(encs, rejected)], weights


def _reference_rejected(ref: Reference, i: int, M: int) -> torch.Tensor:
    """Edit i's M reference log-probs of rejected answers: y⁻, its negatives, then y⁻ repeated."""
    values = torch.cat([ref.rejected[i:i + 1], ref.extra[i]])
    return torch.cat([values, ref.rejected[i].repeat(M - len(values))])


def preservation_loss(model, pres: Preservation, device):
    """This worker's part of L_pres (the parts add up over workers), or None when its shard is empty.

    The base log-probs of the step's anchors are computed once per step (pres.base_logp) and
    serve both SAM passes.
    """
    mine = dist.shard(list(range(len(pres.idx))))
    if not mine:
        return None
    b = pres.batch
    if pres.base_logp is None:
        pres.base_logp = preserve.base_logprobs(model, b.to(device))
    rows = torch.tensor(mine, device=device)
    sub = type(b)(*(t[rows.cpu()].to(device) for t in (b.input_ids, b.attention_mask, b.position_ids,
                                                       b.labels, b.label_mask)))
    with autocast(device):
        logits = preserve.answer_logits(model, sub)
    # this shard's KL summed over its tokens (and first tokens), divided by the whole batch's token
    # (and row) count: the sum over workers is the batch's mean, as one process computes it
    return preserve.kl(pres.base_logp[rows], logits, sub.label_mask, tokens=b.label_mask.sum(), first=pres.first,
                       rows=len(pres.idx))


def combine(grads: Gradients, cfg: EditConfig, generator: torch.Generator) -> torch.Tensor:
    """The update direction: g_sft alone, or g_dpo and g_sft summed or merged by PCGrad."""
    if grads.dpo is None:
        return grads.sft
    return COMBINERS[cfg.combiner]([grads.dpo, grads.sft], generator)


def draw_rephrasings(encoded: list[Encoded], group: list[list[int]], k: int, generator: torch.Generator) -> dict | None:
    """This step's other wordings: for each edit of the group that has some, k of them drawn from the
    shared generator (the same on every worker; both SAM passes see the same ones). None when k is 0."""
    if not k:
        return None
    drawn = {}
    for i in (i for mb in group for i in mb):
        options = encoded[i].rephrased
        if options:
            drawn[i] = [options[j] for j in torch.randperm(len(options), generator=generator)[:k].tolist()]
    return drawn


@dataclass
class SamMemory:
    """What ``sharpness="momentum"`` keeps from one step to the next: the last step's direction g'."""

    direction: torch.Tensor | None = None


def corsa_step(model, params, cfg, encoded, ref, group, pad, generator, pres: Preservation | None = None,
               memory: SamMemory | None = None) -> dict:
    """One optimisation step of method.md §3; returns the step's log entry.

    The optimizer step itself is left to the caller: this fills `p.grad` with g'. Under data
    parallelism the gradients arrive already averaged over workers, so PCGrad, ε and g' are
    computed from identical inputs (and an identical generator) on every worker.

    With ``sharpness="momentum"`` and a `memory` that holds the previous step's g', ε = ρ·g'/‖g'‖
    is taken along it and the probe pass at φ is skipped: one pass per step instead of two
    (Momentum-SAM, Becker et al. 2024, Eq. 4, with the last descent gradient as the momentum). The
    first step of an update has no direction yet and takes the exact step.
    """
    if pres is not None:  # this step's anchors, drawn from the shared generator (same on every worker)
        pres.idx = torch.randperm(len(pres.anchors), generator=generator)[:pres.batch_size].tolist()
        pres.batch = preserve.batch(pres.anchors, pres.idx, pad)
        pres.base_logp = None
    rephrased = draw_rephrasings(encoded, group, cfg.value("rephrase"), generator)
    rho = cfg.sam_rho
    if rho > 0 and cfg.value("sharpness") == "momentum" and memory is not None and memory.direction is not None:
        saved = snapshot(params)                            # exact copy of φ
        add_flat_(params, sam_perturbation(memory.direction, rho))  # φ ← φ + ρ·d/‖d‖, d the last g'
        perturbed = objective_gradients(model, params, cfg, encoded, ref, group, pad, pres, rephrased=rephrased)
        g = combine(perturbed, cfg, generator)              # g' at φ+ε
        restore_(params, saved)
        log = dict(perturbed.stats)
        if perturbed.dpo is not None:  # measured at φ+ε: the one pass this step has
            log["grad/cos_sft_dpo"] = cosine(perturbed.sft, perturbed.dpo)
        log["sam/grad_norm"] = g.norm().item()
        memory.direction = g
        _set_grads(params, g)
        return log
    grads = objective_gradients(model, params, cfg, encoded, ref, group, pad, pres, rephrased=rephrased)
    g = combine(grads, cfg, generator)                      # g = PCGrad(g_dpo, g_sft)
    log = dict(grads.stats)
    if grads.dpo is not None:
        log["grad/cos_sft_dpo"] = cosine(grads.sft, grads.dpo)
    log["grad/norm"] = g.norm().item()
    if rho > 0:
        saved = snapshot(params)                            # exact copy of φ
        add_flat_(params, sam_perturbation(g, rho))         # φ ← φ + ρ·g/‖g‖
        if cfg.value("sharpness") == "reuse" and grads.dpo is not None:
            # g = a·g_dpo + b·g_sft at φ; at φ+ε one backward of a·L_DPO + b·λL_SFT, the same mix
            mix = coefficients(grads.dpo, grads.sft, cfg.combiner)
            g = objective_gradients(model, params, cfg, encoded, ref, group, pad, pres, mix, rephrased).sft
        else:
            perturbed = objective_gradients(model, params, cfg, encoded, ref, group, pad, pres, rephrased=rephrased)
            g = combine(perturbed, cfg, generator)          # g' at φ+ε
        restore_(params, saved)                             # φ ← saved φ, not φ − ε
        log["sam/grad_norm"] = g.norm().item()
    if memory is not None:
        memory.direction = g
    _set_grads(params, g)
    return log


def _set_grads(params, g: torch.Tensor) -> None:
    offset = 0
    for p in params:
        p.grad = g[offset:offset + p.numel()].view_as(p).to(p.dtype).clone()
        offset += p.numel()
