"""Training one update: the loop around the CoRSA step (:mod:`corsa.step`, method.md §3): batches,
the learning-rate schedule, the stopping tests (per-edit stopping, early stopping), the online
negatives refreshed every pass, and the step log."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from . import distributed as dist
from . import negatives
from .config import EditConfig
from .errors import TrainingError
from .generate import generate
from .files import append_jsonl
from .metrics import contains
from .prompts import Encoded, PromptFormat, pad_id
from .scoring import BaseScores, holds, margins
from .step import (Preservation, SamMemory, compute_reference, corsa_step, score_negatives, score_wordings,
                   trainable_parameters)


@dataclass
class UpdateResult:
    steps: int
    epochs: int
    seconds: float
    stopped_early: bool
    history: list[dict]   # one entry per optimizer step, and one per stopping check (edit_stop/…, early_stop/…)
    # with edit_stop: whether each edit held at the test after the last pass, which is the adapter
    # the update leaves (Editor reuses it for the next update's replayed edits); None without edit_stop
    held: list[bool] | None = None

    @property
    def last_step(self) -> dict:
        """The log of the last optimizer step (empty before any)."""
        return next((h for h in reversed(self.history) if "time/step_s" in h), {})


def lr_factor(step: int, warmup: int, total: int) -> float:
    """The learning-rate multiplier of optimizer step `step` (1-based) of `total`: linear warm-up, linear decay.

    Warm-up rises over the first `warmup` steps to 1 (step k of them: k/warmup), then the rate
    falls linearly, (total − k + 1)/(total − warmup) at step k, to 1/(total − warmup) at the last
    step. Unlike a schedule that starts at 0 (transformers' linear warm-up), every step moves the
    adapter: a one-step update trains, and no run wastes its first step.
    """
    warmup = min(warmup, total)
    if step > total:
        return 0.0  # LambdaLR asks once more after the last step
    if step <= warmup:
        return step / warmup
    return (total - step + 1) / (total - warmup)


def micro_batches(encoded: list[Encoded], batch_size: int, generator: torch.Generator,
                  subset: list[int] | None = None) -> list[list[int]]:
    """Edits (all, or those in `subset`) grouped by length into micro-batches, in a seeded random order.

    Sorting by length keeps padding small; shuffling the micro-batches (not the edits inside
    them) keeps the order random from epoch to epoch.
    """
    chosen = range(len(encoded)) if subset is None else subset
    order = sorted(chosen, key=lambda i: (len(encoded[i].prompt) + len(encoded[i].chosen), i))
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
    # split across workers and gathered, so every worker takes the same decision
    m = torch.tensor(dist.gather_sharded(lambda part: margins(model, fmt, part, batch_size).tolist(), encoded))
    if m.min().item() <= cfg.value("margin_target"):
        return False, m.min().item()
    answers = dist.gather_sharded(
        lambda part: generate(model, fmt, [e.prompt for e in part], cfg.max_new_tokens, batch_size), edits)
    ok = all(contains(a, e.target_new) for e, a in zip(edits, answers))
    return ok, m.min().item()


def holding(model, fmt, encoded, cfg, batch_size) -> list[bool]:
    """Per-edit stopping test (scoring.holds) for every encoded edit, split across workers."""
    return dist.gather_sharded(lambda part: holds(model, fmt, part, cfg.value("margin_target"), batch_size), encoded)


def hold_test(model, fmt, encoded, cfg, batch_size, trained: list[int], held: list[bool] | None, epoch: int,
              last: bool) -> tuple[list[bool], int]:
    """The test after pass `epoch` of per-edit stopping: whether each edit holds, and how many were tested.

    Every edit is tested after every pass, or, with retest_every = k > 1, the edits at rest
    (those that held at the last test and did not train in this pass) only after every k-th
    pass, and with k = 0 never in between: they keep their last result. Resting edits are the
    bulk of a lifelong update (every earlier edit), so this spares most of its tests. The edits
    the pass trained are always tested; when all of them hold, or on the last pass, everything
    is tested, so an update ends only on a test of every edit and what it reports as held was
    measured. With k = 0 an update that ends as it should (every trained edit held) tests its
    resting edits once, whatever their number, and once more for each time that finds some lost.
    """
    k = cfg.value("retest_every")
    if held is None or k == 1 or (k and epoch % k == 0) or last:
        return holding(model, fmt, encoded, cfg, batch_size), len(encoded)
    now = holding(model, fmt, [encoded[i] for i in trained], cfg, batch_size)
    held = list(held)
    for i, ok in zip(trained, now):
        held[i] = ok
    if not all(now):
        return held, len(trained)
    # the trained edits all hold: test the resting ones too (the adapter has not moved since)
    trained_set = set(trained)
    resting = [i for i in range(len(encoded)) if i not in trained_set]
    for i, ok in zip(resting, holding(model, fmt, [encoded[i] for i in resting], cfg, batch_size)):
        held[i] = ok
    return held, len(encoded)


def refresh_online_negatives(model, fmt, edits, encoded, ref, which, cfg, batch_size) -> int:
    """Replace the online negative of the edits `which` by their current wrong greedy answer.

    Interference negatives (fixed for the update) stay; the online one, when there is one, is
    the last of Encoded.extra. Returns how many edits now carry an online negative.
    """
    which = list(which)
    answers = dist.gather_sharded(
        lambda part: generate(model, fmt, [edits[i].prompt for i in part], cfg.max_new_tokens, batch_size), which)
    changed = []
    for i, answer in zip(which, answers):
        enc = encoded[i]
        if enc.online:
            enc.extra.pop()
            enc.online = False
        negative = negatives.online(answer, edits[i])
        if negative is not None and len(enc.extra) < cfg.value("max_negatives"):
            enc.extra.append(fmt.answer_ids(negative, cfg.value("train_eos")))
            enc.online = True
        changed.append(i)
    score_negatives(model, fmt, encoded, ref, changed, batch_size)
    if cfg.value("rephrase_dpo"):  # the new negatives after each wording, too
        score_wordings(model, fmt, encoded, ref.base, changed, batch_size)
    for i in changed:
        if not encoded[i].extra:
            ref.extra[i] = torch.empty(0)
    return sum(encoded[i].online for i in which)


def train_update(model, fmt: PromptFormat, edits, encoded: list[Encoded], cfg: EditConfig,
                 log_path=None, progress: bool = True, update_index: int = 0, n_new: int | None = None,
                 anchors=None, on_log=None, base_scores: BaseScores | None = None,
                 replay_held: list[bool] | None = None) -> UpdateResult:
    """Train the adapter of `model` (a PeftModel) on one update's edits.

    `edits` may end with replayed edits of earlier updates (the first `n_new` are the update's
    own). With `cfg.edit_stop` every pass trains only the edits that do not hold yet (a held
    edit stops pulling), every pass ends with a test (hold_test: of every edit, or with
    retest_every = k of the edits it trained and of the resting ones every k-th pass; a pass's
    log entry then counts an untested resting edit as its last test found it), and the update
    ends when all hold on a test of every edit or the budget (epochs, max_steps) is spent;
    replayed edits that already hold at the start do not pull until they are lost.
    `replay_held`, when given, says which replayed edits hold now (the last update's final test, UpdateResult.held: the adapter has not moved
    since), so they are not tested again. `anchors` (preserve.Anchors) feed the preservation
    term; `base_scores` keeps the base model's DPO reference scores across updates.
    Every step's log entry goes to `log_path` (JSON lines); it and every pass's entry also go to
    `on_log` (corsa.tracking.TensorBoard), on the main worker only.

    Under a launcher every worker runs this with the same edits and config: the batch order and
    PCGrad order come from identically seeded generators, the gradients are all-reduced, so the
    workers stay identical and only the main one writes the log and shows progress.
    """
    start = time.perf_counter()
    params = trainable_parameters(model)
    if not params:
        raise TrainingError("the model has no trainable parameters: attach a LoRA adapter first")
    dist.broadcast_(params)  # start from worker 0's φ, as DDP does, whatever each worker loaded
    n_new = len(encoded) if n_new is None else n_new
    pad = pad_id(fmt.tokenizer)
    eval_bs = cfg.eval_batch_size
    online = "online" in cfg.value("negatives")  # () on a row without DPO
    for e in encoded:
        e.online = False
    pres = None
    if cfg.value("preserve") > 0 and anchors is not None and len(anchors):
        pres = Preservation(anchors, cfg.value("preserve"), cfg.value("anchor_batch"), first=cfg.value("preserve_first"))
    generator = torch.Generator().manual_seed(cfg.seed + 1000 * update_index)
    n_micro = math.ceil(len(encoded) / cfg.batch_size)
    steps_per_epoch = math.ceil(n_micro / cfg.grad_accum)
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # LambdaLR counts its steps from 0; the optimizer step it sets the rate for is one more
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(i + 1, cfg.warmup_steps, total))
    history: list[dict] = []

    def record(entry: dict, step_entry: bool = False) -> None:
        history.append(entry)
        if dist.is_main():
            if step_entry and log_path is not None:
                append_jsonl(log_path, entry)
            if on_log is not None:
                on_log(entry)

    step, stopped_early, epoch, final_held = 0, False, 0, None
    active = list(range(len(encoded)))
    if cfg.edit_stop and n_new < len(encoded):  # replayed edits that hold do not pull
        if replay_held is not None and len(replay_held) != len(encoded) - n_new:
            raise ValueError(f"replay_held has {len(replay_held)} entries for {len(encoded) - n_new} replayed edits")
        held = replay_held if replay_held is not None else holding(model, fmt, encoded[n_new:], cfg, eval_bs)
        active = list(range(n_new)) + [n_new + j for j, ok in enumerate(held) if not ok]
        final_held = [False] * n_new + list(held)  # what is known before the first pass (hold_test)
    # the reference of the edits that train; a resting edit gets its own once it is lost (below)
    ref = compute_reference(model, fmt, encoded, cfg, eval_bs, base_scores, active) if cfg.spec.dpo else None
    memory = SamMemory()  # the last step's direction, for sharpness="momentum"; none at an update's start
    model.train()
    bar = tqdm(total=total, desc=f"update {update_index + 1} · {cfg.method}", unit="step", leave=False,
               disable=not dist.show_bar(progress))
    for epoch in range(1, cfg.epochs + 1):
        if online:
            n_online = refresh_online_negatives(model, fmt, edits, encoded, ref, active, cfg, eval_bs)
            model.train()
        batches = micro_batches(encoded, cfg.batch_size, generator, active)
        for s in range(0, len(batches), cfg.grad_accum):
            group = batches[s:s + cfg.grad_accum]
            t0 = time.perf_counter()
            log = corsa_step(model, params, cfg, encoded, ref, group, pad, generator, pres, memory=memory)
            step += 1
            check_finite(log, params, step, group, edits)
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            lr = scheduler.get_last_lr()[0]  # the rate this step is taken with
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            log.update({"update": update_index + 1, "epoch": epoch, "step": step, "edits": sum(map(len, group)),
                        "lr": lr, "time/step_s": time.perf_counter() - t0})
            if online:
                log["negatives/online"] = n_online
            record(log, step_entry=True)
            bar.update(1)
            bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in log.items()
                             if k in ("loss/sft", "loss/dpo", "rewards/margins")})
            if step >= total:
                break
        if cfg.edit_stop:
            last = epoch == cfg.epochs or step >= total
            final_held, tested = hold_test(model, fmt, encoded, cfg, eval_bs, active, final_held, epoch, last)
            active = [i for i, ok in enumerate(final_held) if not ok]
            if ref is not None:
                compute_reference(model, fmt, encoded, cfg, eval_bs, base_scores, active, ref)
            record({"update": update_index + 1, "epoch": epoch, "step": step, "edit_stop/tested": tested,
                    "edit_stop/holding": len(encoded) - len(active), "edit_stop/edits": len(encoded)})
            model.train()
            if not active:
                stopped_early = epoch < cfg.epochs
                break
        elif cfg.early_stop and epoch < cfg.epochs:
            done, min_margin = all_learnt(model, fmt, encoded, edits, cfg, eval_bs)
            record({"update": update_index + 1, "epoch": epoch, "step": step,
                    "early_stop/min_margin": min_margin, "early_stop/done": done})
            model.train()
            if done:
                stopped_early = True
                break
        if step >= total:
            break
    bar.close()
    model.eval()
    return UpdateResult(step, epoch, time.perf_counter() - start, stopped_early, history, final_held)
