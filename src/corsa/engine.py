"""Training one update: the CoRSA step (method.md §3) and the loop around it."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from . import distributed as dist
from . import negatives, preserve
from .config import EditConfig
from .errors import TrainingError
from .generate import generate
from .io import append_jsonl
from .objectives import dpo_loss, sft_loss
from .pcgrad import COMBINERS, coefficients, cosine
from .prompts import Encoded, PromptFormat, collate_shared, pad_id
from .sam import add_flat_, restore_, sam_perturbation, snapshot
from .metrics import contains
from .scoring import autocast, holds, margins, next_token_logprobs, score_pairs, score_shared


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

    def next_token(self, model, fmt: PromptFormat, prompts: list[list[int]], batch_size: int) -> list[dict[int, float]]:
        """log p_base of each prompt's most likely first answer tokens (scoring.next_token_logprobs), kept too."""
        scored = lambda part: next_token_logprobs(model, fmt, part, batch_size)  # noqa: E731
        # whole batches per worker, as one process cuts them: the scores decide a ranking, so they
        # must be bit-identical whatever the number of workers
        return self._kept(self._next, model, [tuple(p) for p in prompts],
                          lambda todo: dist.gather_batches(scored, [list(k) for k in todo], batch_size, key=len))


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
    history: list[dict]   # one entry per optimizer step, and one per stopping check (edit_stop/…, early_stop/…)
    # with edit_stop: whether each edit held at the test after the last pass, which is the adapter
    # the update leaves (Editor reuses it for the next update's replayed edits); None without edit_stop
    held: list[bool] | None = None

    @property
    def last_step(self) -> dict:
        """The log of the last optimizer step (empty before any)."""
        return next((h for h in reversed(self.history) if "time/step_s" in h), {})


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def flat(grads, params) -> torch.Tensor:
    """Concatenate per-parameter gradients (None → zeros) into one vector."""
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                      for g, p in zip(grads, params)])


def compute_reference(model, fmt: PromptFormat, encoded: list[Encoded], cfg: EditConfig,
                      batch_size: int, base: BaseScores | None = None) -> Reference:
    """Reference log-probabilities: the base model (adapter off) or the model as it stands now.

    Under 'base' the scores come from `base` (kept across updates: only pairs it has not seen
    are scored). Under data parallelism each worker scores its shard of the pairs and every
    worker receives all of them, once per update.
    """
    base = BaseScores() if base is None else base
    pairs = [(e.prompt, e.chosen) for e in encoded] + [(e.prompt, e.rejected) for e in encoded]
    if cfg.reference == "base":
        lp = base.of(model, fmt, pairs, batch_size)
    else:
        scored = lambda part: score_pairs(model, fmt, part, batch_size).tolist()  # noqa: E731
        lp = torch.tensor(dist.gather_sharded(scored, pairs))
    n = len(encoded)
    ref = Reference(lp[:n], lp[n:], [torch.empty(0) for _ in encoded], base)
    score_negatives(model, fmt, encoded, ref, range(n), batch_size)
    return ref


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
                        mix: tuple[float, float] | None = None) -> Gradients:
    """∇(λL_SFT + κL_pres) and ∇L_DPO over a group of micro-batches, as one big batch would give them.

    With `mix` = (a, b) it takes ONE backward, of a·L_DPO + b·(λL_SFT + κL_pres), and returns
    that gradient as `sft` (and `dpo` None): the perturbed pass of `sharpness="reuse"`.

    Chosen and rejected answers go through ONE forward, which runs each prompt once and
    continues every answer (y⁺, y⁻ and any extra negatives) from its KV cache; both losses come
    from it, and each gradient is one backward through that shared graph. Micro-batch losses
    are weighted by their share of the group's edits, so accumulation equals the large-batch
    mean exactly. The preservation term (`pres`, corsa.preserve) is computed once per group on
    the step's anchors and joins the SFT side.

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
    g_dpo = torch.zeros_like(g_sft) if spec.dpo and mix is None else None
    a_dpo, b_sft = mix if mix is not None else (1.0, 1.0)
    stats = {"loss/sft": 0.0}
    if spec.dpo:
        stats.update({"loss/dpo": 0.0, "rewards/margins": 0.0, "logps/chosen": 0.0, "logps/rejected": 0.0})
    for mb in group:
        mb = dist.shard(mb)                                              # all of it in one process
        if not mb:
            continue
        w = len(mb) / n_group
        if spec.dpo:  # the prompt runs once; y⁺, y⁻ and the negatives all continue from its KV cache
            M = 1 + max(len(encoded[i].extra) for i in mb)
            # every prompt gets M rejected rows; a prompt with fewer negatives repeats y⁻ at weight 0
            rejected = [[encoded[i].rejected, *encoded[i].extra] for i in mb]
            weights = torch.tensor([[1.0] * len(r) + [0.0] * (M - len(r)) for r in rejected], device=device)
            answers = [[encoded[i].chosen, *r, *[encoded[i].rejected] * (M - len(r))] for i, r in zip(mb, rejected)]
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
    # this shard's KL summed over its tokens, divided by the whole batch's token count: the sum
    # over workers is the batch's token mean, as one process computes it
    return preserve.kl(pres.base_logp[rows], logits, sub.label_mask, tokens=b.label_mask.sum())


def combine(grads: Gradients, cfg: EditConfig, generator: torch.Generator) -> torch.Tensor:
    """The update direction: g_sft alone, or g_dpo and g_sft summed or merged by PCGrad."""
    if grads.dpo is None:
        return grads.sft
    return COMBINERS[cfg.combiner]([grads.dpo, grads.sft], generator)


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
    rho = cfg.sam_rho
    if rho > 0 and cfg.value("sharpness") == "momentum" and memory is not None and memory.direction is not None:
        saved = snapshot(params)                            # exact copy of φ
        add_flat_(params, sam_perturbation(memory.direction, rho))  # φ ← φ + ρ·d/‖d‖, d the last g'
        perturbed = objective_gradients(model, params, cfg, encoded, ref, group, pad, pres)
        g = combine(perturbed, cfg, generator)              # g' at φ+ε
        restore_(params, saved)
        log = dict(perturbed.stats)
        if perturbed.dpo is not None:  # measured at φ+ε: the one pass this step has
            log["grad/cos_sft_dpo"] = cosine(perturbed.sft, perturbed.dpo)
        log["sam/grad_norm"] = g.norm().item()
        memory.direction = g
        _set_grads(params, g)
        return log
    grads = objective_gradients(model, params, cfg, encoded, ref, group, pad, pres)
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
            g = objective_gradients(model, params, cfg, encoded, ref, group, pad, pres, mix).sft
        else:
            perturbed = objective_gradients(model, params, cfg, encoded, ref, group, pad, pres)
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
    pass: in between they keep their last result. Resting edits are the bulk of a lifelong
    update (every earlier edit), so this spares most of its tests. The edits the pass trained
    are always tested; when all of them hold, or on the last pass, everything is tested, so an
    update ends only on a test of every edit and what it reports as held was measured.
    """
    k = cfg.value("retest_every")
    if held is None or k == 1 or epoch % k == 0 or last:
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
    ref = compute_reference(model, fmt, encoded, cfg, eval_bs, base_scores) if cfg.spec.dpo else None
    pres = None
    if cfg.value("preserve") > 0 and anchors is not None and len(anchors):
        pres = Preservation(anchors, cfg.value("preserve"), cfg.anchor_batch)
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
