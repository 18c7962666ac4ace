"""Data parallelism across processes started by `torchrun` or `accelerate launch` (method.md §3).

The process group is set up by accelerate's `PartialState` (NCCL on GPUs, gloo on CPUs) when a
launcher started us, and is a no-op single process otherwise: every helper below then returns
what one process would (world size 1, rank 0, identity reductions), so the engine has one code
path.

We do not wrap the model in `DistributedDataParallel`. The engine already works with one flat
gradient vector per objective, and CoRSA needs those vectors *globally averaged before* PCGrad
and the SAM norm (DDP would average only the final `p.grad`, after the per-worker surgery). So
each worker computes its shard's share of g_sft and g_dpo and we sum them with one
`torch.distributed.all_reduce` per objective — the same collective DDP uses, applied where the
algorithm needs it.

Every function that communicates is *collective*: all workers must call it, in the same order.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence, TypeVar

import torch

from .errors import ConfigError, CorsaError

T = TypeVar("T")
R = TypeVar("R")


def launched() -> bool:
    """True when a launcher (torchrun, accelerate launch) started more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(cpu: bool | None = None):
    """Join the launcher's process group (once); returns accelerate's `PartialState`.

    cpu: use gloo on CPU tensors even where CUDA exists; None means "CPU when there is no GPU".
    Without a launcher this creates no process group and returns a single-process state.
    """
    from accelerate import PartialState

    for variable, engine in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if os.environ.get(variable, "false").lower() == "true":
            raise ConfigError(f"corsa does not support {engine} yet and would silently train without it "
                              f"(see docs/scaling-out.md); launch plain data parallelism instead: "
                              f"accelerate launch --multi_gpu, or torchrun")
    if cpu is None:
        cpu = not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def shutdown(wait: bool = True) -> None:
    """Leave the process group, if one was joined, before the interpreter exits.

    Left to interpreter shutdown, gloo's worker threads can be torn down while still joinable,
    and a worker that finished its work aborts ("terminate called without an active exception"),
    which the launcher reports as a failure. The same abort was seen when one worker left the
    group while worker 0 was still writing the report, so with `wait` every worker first meets
    the others at a barrier (skip it after an error: the others may never arrive).
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        from accelerate import PartialState

        if wait:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        PartialState._reset_state()  # so that a later init() in this process joins a new group


def _active() -> bool:
    if launched() and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        init()  # a launched process that skipped Editor (the engine used directly)
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def world_size() -> int:
    return torch.distributed.get_world_size() if _active() else 1


def rank() -> int:
    return torch.distributed.get_rank() if _active() else 0


def is_main() -> bool:
    """The one process that writes files, logs and progress bars."""
    return rank() == 0


def show_bar(progress: bool) -> bool:
    """Whether to draw a progress bar: asked for, by the main process, on a terminal.

    A bar's redraws in a log file are noise, so output that is not a terminal gets the run's
    one-line messages only (which `progress` still turns on).
    """
    import sys

    return bool(progress) and is_main() and sys.stderr.isatty()


def device(requested: str | None = None) -> str | torch.device | None:
    """The device this worker should load the model on.

    Under a multi-GPU launch, "auto"/"cuda"/None mean this worker's own GPU (cuda:LOCAL_RANK);
    any other request, and every request outside a launch, is passed on unchanged.
    """
    if not launched():
        return requested
    if requested in (None, "auto"):
        cpu = None
    else:
        try:
            cpu = torch.device(requested).type == "cpu"
        except (RuntimeError, TypeError):
            return requested  # load_model says what is wrong with it
    state = init(cpu=cpu)  # gloo for a CPU model even on a machine with GPUs
    if requested in (None, "auto", "cuda") and state.device.type == "cuda":
        return state.device
    return requested


# ------------------------------------------------------------------------------------------------
# Collectives


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """tensor ← Σ over workers of tensor, in place (identity in one process)."""
    if _active():
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


def broadcast_(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Overwrite every worker's tensors with those of worker `src`, in place."""
    if _active():
        with torch.no_grad():
            for t in tensors:
                torch.distributed.broadcast(t.data, src=src)


def shard(items: Sequence[T]) -> list[T]:
    """This worker's share of `items`: every world_size-th one from its rank (r::world).

    The shards of all workers are disjoint and together hold every item exactly once.
    """
    return list(items[rank()::world_size()])


def gather_sharded(fn: Callable[[list[T]], Sequence[R]], items: Sequence[T]) -> list[R]:
    """fn(items), computed as fn on each worker's shard and gathered, in the order of `items`.

    `fn` maps a list to one result per element (answers, log-probabilities). Every worker gets
    the full list back. A worker whose shard is empty does not call `fn`.
    """
    world = world_size()
    if world == 1:
        return list(fn(list(items)))
    mine = shard(items)
    local = [r.item() if isinstance(r, torch.Tensor) else r for r in fn(mine)] if mine else []
    parts: list = [None] * world
    torch.distributed.all_gather_object(parts, local)
    out: list = [None] * len(items)
    for r, part in enumerate(parts):
        out[r::world] = part
    return out


def gather_batches(fn: Callable[[list[T]], Sequence[R]], items: Sequence[T], batch_size: int,
                   key: Callable[[T], object] | None = None) -> list[R]:
    """fn(items), split across workers batch by batch, so each result is computed exactly as one
    process computes it.

    For an `fn` that sorts its input by `key` (stably) and cuts it into batches of `batch_size`
    (generation, scoring): the items are sorted and cut here the same way, and whole batches are
    dealt round robin, so every batch holds the same items, padded the same, as in one process —
    the results are bit-identical, not just equal up to rounding. Every worker gets the full
    list back, in the order of `items`.
    """
    world = world_size()
    if world == 1:
        return list(fn(list(items)))
    order = sorted(range(len(items)), key=(lambda i: key(items[i])) if key is not None else None)
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    # this worker's batches, concatenated: only the overall last batch can be short, and it
    # comes last, so fn cuts the concatenation back into exactly these batches
    mine = [i for b in batches[rank()::world] for i in b]
    local = []
    if mine:
        for r in fn([items[i] for i in mine]):
            local.append(r.tolist() if isinstance(r, torch.Tensor) else r)
    parts: list = [None] * world
    torch.distributed.all_gather_object(parts, (mine, local))
    out: list = [None] * len(items)
    for indices, results in parts:
        for i, r in zip(indices, results, strict=True):
            out[i] = r
    return out


def on_main(fn: Callable[..., R], *args, **kwargs) -> R:
    """Run fn on the main process only; every worker returns its result, or raises its error.

    A collective (it waits for the main process), so a failure on the main process, such as an
    unwritable output folder, stops every worker with the same error instead of a hang.
    """
    if not _active():
        return fn(*args, **kwargs)
    box: list = [None]
    error: Exception | None = None
    if is_main():
        try:
            box[0] = ("ok", fn(*args, **kwargs))
        except Exception as e:
            error = e
            # CorsaErrors travel as they are; anything else as a plain, surely picklable, summary
            sent = e if isinstance(e, CorsaError) else RuntimeError(f"on the main process: {type(e).__name__}: {e}")
            box[0] = ("error", sent)
    torch.distributed.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    status, value = box[0]
    if status == "error":
        raise value
    return value
