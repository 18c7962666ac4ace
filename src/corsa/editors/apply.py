"""One update of a locate-then-edit method, written into the LoRA adapter that carries it.

The weight change of ROME, MEMIT and AlphaEdit is low-rank (rank ≤ the edits it makes), so it
is stored as a PEFT LoRA adapter on the edited layers' MLP output projections, rank
`edit_rank`, scale 1 (α = r): `corsa ask`, `corsa eval`, the bench, `corsa export` and vLLM
read it as any other adapter, and a later update adds its change to the one there. AlphaEdit
also keeps the keys of the edits made so far (KEYS_FILE beside the adapter), so a later update
leaves them alone.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..engine import UpdateResult
from ..errors import ConfigError
from . import solve, stats, targets
from .layout import find_layout, parse_layers

KEYS_FILE = "locate-keys.safetensors"
RIDGE = 1e-3


def lora_config(model, cfg):
    """The LoRA config of a locate-then-edit adapter: rank edit_rank, α = r (scale 1), on the
    MLP output projection of the method's layers."""
    from peft import LoraConfig

    layout = find_layout(model)
    layers = parse_layers(cfg.value("layers"), cfg.spec.solver, layout.n_layers)
    r = cfg.value("edit_rank")
    return LoraConfig(r=r, lora_alpha=r, lora_dropout=0.0, target_modules=layout.module_names(layers),
                      bias="none", task_type="CAUSAL_LM")


def edited_layers(model, layout) -> list[int]:
    """The layers whose projection carries a LoRA adapter (those of the adapter's config)."""
    return [i for i in range(layout.n_layers) if hasattr(layout.module(model, i), "lora_A")]


def read_keys(folder: Path | None) -> dict[int, torch.Tensor]:
    """The keys (d_in × n) of the edits a saved adapter holds, per layer; {} for none."""
    from safetensors.torch import load_file

    file = Path(folder) / KEYS_FILE if folder is not None else None
    if file is None or not file.exists():
        return {}
    return {int(k.split("-")[1]): v for k, v in load_file(str(file)).items()}


def write_keys(folder: Path, keys: dict[int, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    if keys:
        save_file({f"layer-{i}": k.contiguous() for i, k in keys.items()}, str(Path(folder) / KEYS_FILE))


@torch.no_grad()
def current_delta(module) -> torch.Tensor:
    """The weight change a LoRA layer carries now: scale · B A (d_out × d_in), float64 on the CPU
    (where every solve runs, whatever the model's device and dtype)."""
    A, B = module.lora_A["default"].weight, module.lora_B["default"].weight
    return module.scaling["default"] * (B.detach().double().cpu() @ A.detach().double().cpu())


def set_delta(module, delta: torch.Tensor) -> float:
    """Write `delta` into the LoRA layer as its best rank-r factors; returns the relative error."""
    A, B = module.lora_A["default"].weight, module.lora_B["default"].weight
    factor_B, factor_A, error = solve.low_rank(delta / module.scaling["default"], A.shape[0])
    with torch.no_grad():
        A.copy_(factor_A.to(A.dtype))
        B.copy_(factor_B.to(B.dtype))
    return error


def apply_update(model, fmt, edits, cfg, keys_so_far: dict[int, torch.Tensor], fingerprint: str = "",
                 progress: bool = True, log=None) -> UpdateResult:
    """Edit `model`'s adapter with `edits` by cfg.spec.solver (rome, memit or alphaedit).

    `keys_so_far` (AlphaEdit's earlier keys, per layer) is extended with this update's. An update
    that fails part-way leaves the adapter and the keys as they were.
    """
    started = time.time()
    solver = cfg.spec.solver
    layout = find_layout(model)
    layers = edited_layers(model, layout)
    wanted = parse_layers(cfg.value("layers"), solver, layout.n_layers)
    if cfg.layers is not None and wanted != layers:
        raise ConfigError(f"--layers {cfg.layers} asks for layers {wanted}, but the adapter edits layers {layers}; "
                          f"a continued adapter keeps its layers")
    if solver == "rome" and len(layers) != 1:
        raise ConfigError(f"ROME edits one layer, and this adapter edits {len(layers)} ({layers}); continue it "
                          f"with the method that made it")
    # every edit's subject is found before any costly work: a missing one is refused at once
    rows = [targets.subject_rows(fmt, e) for e in edits]
    C = stats.second_moments(model, fmt, layout, layers, cfg.value("stats_corpus"), cfg.value("stats_tokens"),
                             fingerprint, progress, log)
    # a ridge of RIDGE × the mean eigenvalue: a corpus of a few thousand tokens leaves some key
    # directions with a second moment of ~0, and C⁻¹ (ROME) would send the change along them
    C = {layer: c + RIDGE * c.trace() / c.shape[0] * torch.eye(c.shape[0], dtype=c.dtype) for layer, c in C.items()}
    stats_s = time.time() - started
    settings = {"steps": cfg.value("target_steps"), "lr": cfg.value("target_lr"), "clamp": cfg.value("clamp_factor"),
                "kl_weight": cfg.value("kl_weight"), "eos": False}
    saved = {layer: current_delta(layout.module(model, layer)) for layer in layers}
    new_keys: dict[int, torch.Tensor] = {}
    try:
        if solver == "rome":
            module = layout.module(model, layers[0])
            delta, h0, nll = targets.optimise(model, fmt, module, edits, rows, settings)
            targets_s = time.time() - started - stats_s
            at = module
            errors = _rome(model, layout, layers[0], targets.keys(model, fmt, module, rows).double(), delta,
                           C[layers[0]])
        else:
            at = layout.layer(model, layers[-1])
            delta, h0, nll = targets.optimise(model, fmt, at, edits, rows, settings)
            targets_s = time.time() - started - stats_s
            errors = _spread(model, fmt, layout, layers, rows, at, h0.double() + delta.double(), C, cfg, solver,
                             keys_so_far, new_keys)
        # how far the edited vectors moved towards their targets at the plain prompts (1: all the way)
        reached = targets.reached(model, fmt, at, [r[0] for r in rows], h0, delta)
    except BaseException:
        for layer, d in saved.items():  # the adapter as the update found it
            set_delta(layout.module(model, layer), d)
        raise
    for layer, K in new_keys.items():
        keys_so_far[layer] = torch.cat([keys_so_far[layer], K], 1) if layer in keys_so_far else K
    seconds = time.time() - started
    history = [{"edit": e.id, "target_nll": x} for e, x in zip(edits, nll)]
    history.append({"time/step_s": seconds, "time/stats_s": stats_s, "time/targets_s": targets_s,
                    "locate/target_reached": reached, "locate/max_target_nll": max(nll),
                    "locate/rank_error": max(errors.values(), default=0.0)})
    return UpdateResult(1, 1, seconds, False, history)


def _rome(model, layout, layer, K, delta, C) -> dict[int, float]:
    """ROME's rank-one changes, one edit after another (solve.rome_update), on the CPU in float64.

    ROME edits one fact at a time. The target vectors of an update's edits are found together on
    the model the update starts from (one batched optimisation instead of one per edit, which on
    a CPU costs a minute per edit); the rank-one changes are then made one after another, each on
    the weights the previous one left: edit i maps its key to its value exactly when it is made,
    and later ones move it only as far as their keys overlap.
    """
    module = layout.module(model, layer)
    base = layout.weight(model, layer).detach().double().cpu()
    total = current_delta(module)
    values = ((base + total) @ K).T + delta.double()                            # (n, d_out): v = W k + δ
    for i in range(K.shape[1]):
        total = total + solve.rome_update(base + total, K[:, i], values[i], C)
    return {layer: set_delta(module, total)}


def _spread(model, fmt, layout, layers, rows, last, z, C, cfg, solver, keys_so_far, new_keys) -> dict[int, float]:
    """MEMIT's and AlphaEdit's change, layer by layer (MEMIT §4.3): each layer takes its share of
    what still separates layer L's output from the targets z, with the keys of the model as the
    layers before it left it."""
    errors = {}
    for j, layer in enumerate(layers):
        module = layout.module(model, layer)
        K = targets.keys(model, fmt, module, rows).double()                       # (d_in, n)
        now = targets.capture(model, fmt, last, [r[0] for r in rows], "output").double()
        R = (z - now).T / (len(layers) - j)                                       # spread over the layers left
        if solver == "memit":
            change = solve.memit_update(R, K, C[layer], cfg.value("mom2_weight"))
        else:
            P = solve.null_space_projector(C[layer], cfg.value("nullspace_threshold"))
            if round(float(P.trace())) == 0:
                raise ConfigError(f"AlphaEdit: no key direction of layer {layer} has a second moment below "
                                  f"--nullspace-threshold {cfg.value('nullspace_threshold')} of the largest, so "
                                  f"there is nothing it may change; raise the threshold")
            prev = keys_so_far.get(layer)
            # α relative to tr C, the mean squared norm of a corpus key, so one setting fits any model
            alpha = cfg.value("alphaedit_l2") * float(C[layer].trace())
            change = solve.alphaedit_update(R, K, P, prev.double() @ prev.double().T if prev is not None else None,
                                            alpha)
            new_keys[layer] = K.float()
        errors[layer] = set_delta(module, current_delta(module) + change)
    return errors
