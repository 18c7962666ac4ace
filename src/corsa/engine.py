"""Training one update: the CoRSA step (method.md §3) and the loop around it."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from . import distributed as dist
from .config import EditConfig
from .errors import TrainingError
from .io import append_jsonl
from .objectives import dpo_loss, sft_loss
from .pcgrad import COMBINERS, cosine
from .prompts import Encoded, PromptFormat, collate, collate_shared, pad_id, score, score_shared
from .sam import add_flat_, restore_, sam_perturbation, snapshot
from .scoring import answer_logprobs, autocast, margins


@dataclass
class Reference:
    """log p_ref(y⁺|x) and log p_ref(y⁻|x) for every edit of the update, computed once (§2)."""

    chosen: torch.Tensor
    rejected: torch.Tensor


@dataclass
class Gradients:
    """The flat gradients of one pass over an accumulation group, and what was seen on the way."""

    sft: torch.Tensor
    dpo: torch.Tensor | None
    stats: dict = field(default_factory=dict)


@dataclass
class UpdateResult:
    steps: int
    epochs: int
    seconds: float
    stopped_early: bool
    history: list[dict]


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def flat(grads, params) -> torch.Tensor:
    """Concatenate per-parameter gradients (None → zeros) into one vector."""
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                      for g, p in zip(grads, params)])


def compute_reference(model, fmt: PromptFormat, encoded: list[Encoded], cfg: EditConfig,
                      batch_size: int) -> Reference:
    """Reference log-probabilities: the base model (adapter off) or the model as it stands now.

    Under data parallelism each worker scores its shard of the pairs and every worker receives
    all of them, once per update.
    """
    pairs = [(e.prompt, e.chosen) for e in encoded] + [(e.prompt, e.rejected) for e in encoded]
    score_pairs = lambda part: answer_logprobs(model, fmt, part, batch_size).tolist()  # noqa: E731
    if cfg.reference == "base":
        with model.disable_adapter():
            lp = torch.tensor(dist.gather_sharded(score_pairs, pairs))
    else:
        lp = torch.tensor(dist.gather_sharded(score_pairs, pairs))
    n = len(encoded)
    return Reference(lp[:n], lp[n:])


def objective_gradients(model, params, cfg: EditConfig, encoded: list[Encoded], ref: Reference | None,
                        group: list[list[int]], pad: int) -> Gradients:
    """∇L_SFT·λ and ∇L_DPO over a group of micro-batches, as one big batch would give them.

    Chosen and rejected answers go through ONE forward, which runs each prompt once and
    continues both answers from its KV cache; both losses come from it, and each gradient is
    one backward through that shared graph. Micro-batch losses are weighted by
    their share of the group's edits, so accumulation equals the large-batch mean exactly.

    Data parallel: `group` is the step's global group, the same on every worker. Each worker
    takes its shard of every micro-batch (edits r::world), weights it by its share of the
    *global* group, and the sum over workers (one all-reduce per objective) is then exactly the
    gradient one process gets. Both objectives are reduced here, before PCGrad and before the
    SAM norm, so every worker leaves with identical global g_sft and g_dpo (method.md §3).
    """
    spec = cfg.spec
    device = params[0].device
    n_group = sum(len(mb) for mb in group)
    g_sft = torch.zeros(sum(p.numel() for p in params), device=device)
    g_dpo = torch.zeros_like(g_sft) if spec.dpo else None
    stats = {"loss/sft": 0.0}
    if spec.dpo:
        stats.update({"loss/dpo": 0.0, "rewards/margins": 0.0, "logps/chosen": 0.0, "logps/rejected": 0.0})
    for mb in group:
        mb = dist.shard(mb)                                              # all of it in one process
        if not mb:
            continue
        w = len(mb) / n_group
        n = len(mb)
        if spec.dpo:  # the prompt runs once; y⁺ and y⁻ both continue from its KV cache
            batch = collate_shared([encoded[i].prompt for i in mb],
                                   [[encoded[i].chosen, encoded[i].rejected] for i in mb], pad).to(device)
            with autocast(device):
                lp = score_shared(model, batch).T.reshape(-1)            # (2B,): chosen, then rejected
            n_chosen = batch.answer_mask[::2].sum(-1)
        else:
            batch = collate([(encoded[i].prompt, encoded[i].chosen) for i in mb], pad).to(device)
            with autocast(device):
                lp = score(model, batch)                                 # (B,)
            n_chosen = batch.n_answer_tokens
        loss_sft = sft_loss(lp[:n], n_chosen)
        stats["loss/sft"] += w * loss_sft.item()
        if spec.dpo:
            loss_dpo = dpo_loss(lp[:n], lp[n:], ref.chosen[mb].to(device), ref.rejected[mb].to(device),
                                cfg.dpo_beta)
            g_dpo += flat(torch.autograd.grad(w * loss_dpo, params, retain_graph=True, allow_unused=True), params)
            stats["loss/dpo"] += w * loss_dpo.item()
            stats["rewards/margins"] += w * (lp[:n] - lp[n:]).mean().item()
            stats["logps/chosen"] += w * lp[:n].mean().item()
            stats["logps/rejected"] += w * lp[n:].mean().item()
        g_sft += flat(torch.autograd.grad(w * cfg.sft_weight * loss_sft, params, allow_unused=True), params)
    dist.all_reduce_sum_(g_sft)
    if g_dpo is not None:
        dist.all_reduce_sum_(g_dpo)
    if dist.world_size() > 1:  # the logged losses, too, are the global group's
        summed = dist.all_reduce_sum_(torch.tensor(list(stats.values()), dtype=torch.float64, device=device))
        stats = dict(zip(stats, summed.tolist()))
    return Gradients(g_sft, g_dpo, stats)


def combine(grads: Gradients, cfg: EditConfig, generator: torch.Generator) -> torch.Tensor:
    """The update direction: g_sft alone, or g_dpo and g_sft summed or merged by PCGrad."""
    if grads.dpo is None:
        return grads.sft
    return COMBINERS[cfg.combiner]([grads.dpo, grads.sft], generator)


def corsa_step(model, params, cfg, encoded, ref, group, pad, generator) -> dict:
    """One optimisation step of method.md §3; returns the step's log entry.

    The optimizer step itself is left to the caller: this fills `p.grad` with g'. Under data
    parallelism the gradients arrive already averaged over workers, so PCGrad, ε and g' are
    computed from identical inputs (and an identical generator) on every worker.
    """
    grads = objective_gradients(model, params, cfg, encoded, ref, group, pad)
    g = combine(grads, cfg, generator)                      # g = PCGrad(g_dpo, g_sft)
    log = dict(grads.stats)
    if grads.dpo is not None:
        log["grad/cos_sft_dpo"] = cosine(grads.sft, grads.dpo)
    log["grad/norm"] = g.norm().item()
    rho = cfg.sam_rho
    if rho > 0:
        saved = snapshot(params)                            # exact copy of φ
        add_flat_(params, sam_perturbation(g, rho))         # φ ← φ + ρ·g/‖g‖
        perturbed = objective_gradients(model, params, cfg, encoded, ref, group, pad)
        g = combine(perturbed, cfg, generator)              # g' at φ+ε
        restore_(params, saved)                             # φ ← saved φ, not φ − ε
        log["sam/grad_norm"] = g.norm().item()
    offset = 0
    for p in params:
        p.grad = g[offset:offset + p.numel()].view_as(p).to(p.dtype).clone()
        offset += p.numel()
    return log


def micro_batches(encoded: list[Encoded], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Edits grouped by length into micro-batches, in a seeded random order.

    Sorting by length keeps padding small; shuffling the micro-batches (not the edits inside
    them) keeps the order random from epoch to epoch.
    """
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i].prompt) + len(encoded[i].chosen), i))
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    perm = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in perm]


def check_finite(log: dict, params, step: int, group, edits) -> None:
    bad = [k for k, v in log.items() if isinstance(v, float) and not math.isfinite(v)]
    if not bad and all(torch.isfinite(p.grad).all() for p in params):
        return
    ids = [edits[i].id for mb in group for i in mb]
    what = ", ".join(bad) if bad else "gradient"
    raise TrainingError(f"non-finite {what} at step {step} on the edit batch {ids}; training stopped. "
                        "Try a smaller --lr or --rho, or check these edits")


def all_learnt(model, fmt, encoded, edits, cfg, batch_size) -> tuple[bool, float]:
    """Early-stop test: every margin exceeds γ and every greedy answer contains y⁺."""
    from .generate import generate

    # split across workers and gathered, so every worker takes the same decision
    m = torch.tensor(dist.gather_sharded(lambda part: margins(model, fmt, part, batch_size).tolist(), encoded))
    if m.min().item() <= cfg.margin_target:
        return False, m.min().item()
    answers = dist.gather_sharded(
        lambda part: generate(model, fmt, [e.prompt for e in part], cfg.max_new_tokens, batch_size), edits)
    ok = all(normalise(e.target_new) in normalise(a) for e, a in zip(edits, answers))
    return ok, m.min().item()


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def train_update(model, fmt: PromptFormat, edits, encoded: list[Encoded], cfg: EditConfig,
                 log_path=None, progress: bool = True, update_index: int = 0) -> UpdateResult:
    """Train the adapter of `model` (a PeftModel) on one update's edits.

    Under a launcher every worker runs this with the same edits and config: the batch order and
    PCGrad order come from identically seeded generators, the gradients are all-reduced, so the
    workers stay identical and only the main one writes the log and shows progress.
    """
    start = time.perf_counter()
    params = trainable_parameters(model)
    if not params:
        raise TrainingError("the model has no trainable parameters: attach a LoRA adapter first")
    dist.broadcast_(params)  # start from worker 0's φ, as DDP does, whatever each worker loaded
    pad = pad_id(fmt.tokenizer)
    eval_bs = max(cfg.batch_size, 16)
    ref = compute_reference(model, fmt, encoded, cfg, eval_bs) if cfg.spec.dpo else None
    generator = torch.Generator().manual_seed(cfg.seed + 1000 * update_index)
    n_micro = math.ceil(len(encoded) / cfg.batch_size)
    steps_per_epoch = math.ceil(n_micro / cfg.grad_accum)
    total = steps_per_epoch * cfg.epochs
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, min(cfg.warmup_steps, total), total)
    history: list[dict] = []
    step, stopped_early, epoch = 0, False, 0
    model.train()
    bar = tqdm(total=total, desc=f"update {update_index + 1} · {cfg.method}", unit="step", leave=False,
               disable=not (progress and dist.is_main()))
    for epoch in range(1, cfg.epochs + 1):
        batches = micro_batches(encoded, cfg.batch_size, generator)
        for s in range(0, len(batches), cfg.grad_accum):
            group = batches[s:s + cfg.grad_accum]
            t0 = time.perf_counter()
            log = corsa_step(model, params, cfg, encoded, ref, group, pad, generator)
            step += 1
            check_finite(log, params, step, group, edits)
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            log.update({"update": update_index + 1, "epoch": epoch, "step": step,
                        "lr": scheduler.get_last_lr()[0], "time/step_s": time.perf_counter() - t0})
            history.append(log)
            if log_path is not None and dist.is_main():
                append_jsonl(log_path, log)
            bar.update(1)
            bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in log.items()
                             if k in ("loss/sft", "loss/dpo", "rewards/margins")})
        if cfg.early_stop and epoch < cfg.epochs:
            done, min_margin = all_learnt(model, fmt, encoded, edits, cfg, eval_bs)
            history.append({"update": update_index + 1, "epoch": epoch, "step": step,
                            "early_stop/min_margin": min_margin, "early_stop/done": done})
            if done:
                stopped_early = True
                break
    bar.close()
    model.eval()
    return UpdateResult(step, epoch, time.perf_counter() - start, stopped_early, history)
