"""What an edit costs: step time, peak memory and time to edit, method beside method.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/run_benchmark.py            # tiny + SmolLM2 (~20 min, 1 CPU thread)
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/run_benchmark.py --quick    # tiny model only (seconds)

Everything is measured in one process, on the same batches, so the ratios hold even when the
machine is shared:

- step time: one optimisation step (gradients, clip, AdamW) of lora, sam, dpo, corsa and the
  straightforward CoRSA step of `straightforward.py`, run round-robin on the same micro-batches
  from the same adapter state (restored after every step); the median over `--steps` rounds
  after `--warmup` rounds;
- peak memory: one more step of each under `torch.profiler` (profile_memory): the peak of the
  bytes the step allocated and had not yet freed (activations, graphs, gradients,
  temporaries), added to the resting memory (weights, adapter, AdamW state). On CUDA the same
  from `torch.cuda.max_memory_allocated`;
- time to edit: wall time of `Editor.update` on `--edits` CounterFact edits with CoRSA, early
  stopping on the margin against a fixed 10 epochs, and the reliability (greedy answer
  contains y⁺) each reaches.

The JSON written to `--out` holds the raw figures, the ratios and the speed targets they are checked against.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from corsa import EditConfig, Editor  # noqa: E402
from corsa.adapter import attach_new  # noqa: E402
from corsa.engine import micro_batches  # noqa: E402
from corsa.step import SamMemory, compute_reference, corsa_step, trainable_parameters  # noqa: E402
from corsa.metrics import contains  # noqa: E402
from corsa.generate import generate  # noqa: E402
from corsa.files import atomic_write_json  # noqa: E402
from corsa.machine import library_versions  # noqa: E402
from corsa.loaders import load_edits  # noqa: E402
from corsa.prompts import PromptFormat, collate, collate_shared, encode_edits  # noqa: E402
from corsa.scoring import score, score_shared  # noqa: E402
from corsa.scoring import autocast  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from straightforward import straightforward_step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COUNTERFACT = ROOT.parent / "shared" / "data" / "counterfact" / "easyedit" / "counterfact-edit.json"
METHODS = ("lora", "sam", "dpo", "corsa", "corsa-reuse", "corsa-momentum", "straightforward")
# benchmark rows that are a method with one option set (the cheaper sharpness step, issue "A CoRSA update in seconds")
VARIANTS = {"straightforward": dict(method="corsa"), "corsa-reuse": dict(method="corsa", sharpness="reuse"),
            "corsa-momentum": dict(method="corsa", sharpness="momentum")}
MiB = 2 ** 20

# Per model: the step batch, and the CoRSA hyperparameters for time to edit. On SmolLM2 these
# switch all 64 CounterFact answers (lr 1e-3 with 16 edits a step leaves one edit unswitched after
# 10 epochs; 3e-3 oscillates). The tiny random model cannot learn 64 facts: its time to edit only
# exercises the code.
SETTINGS = {
    "tiny": dict(step=dict(batch_size=8, grad_accum=1),
                 edit=dict(lr=2e-2, batch_size=8, grad_accum=1, warmup_steps=2, margin_target=1.0)),
    # time to edit on SmolLM2 takes the library's defaults: what a user's `corsa edit` does
    "smollm2-135m": dict(step=dict(batch_size=8, grad_accum=1), edit=dict()),
}


def load(name: str, device: torch.device):
    """(model, tokenizer): a fresh copy of the base model, frozen."""
    if name == "tiny":
        from corsa.testing import tiny_llama

        model, tok = tiny_llama(seed=0)
        model.requires_grad_(False)
        return model.to(device).eval(), tok
    from corsa.models import load_model

    return load_model(name, device=device)


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is not None and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


class PeakMemory:
    """Peak bytes allocated and not yet freed inside the block, above what was live at its start.

    CPU: replays the allocator events of `torch.profiler` (memory held by oneDNN's private
    scratch pads is not seen). CUDA: `torch.cuda.max_memory_allocated`.
    """

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
            self.prof.__enter__()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
            return
        self.prof.__exit__(*exc)
        events = sorted((e.start_ns(), e.nbytes()) for e in self.prof.profiler.kineto_results.events()
                        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
        live = peak = 0
        for _, nbytes in events:
            live += nbytes
            peak = max(peak, live)
        self.peak = peak


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_steps(name: str, device, data: Path, steps: int, warmup: int, n_edits: int, batch_size: int,
                grad_accum: int) -> dict:
    """Step time and peak memory of every method on the same micro-batches and adapter state."""
    base, tok = load(name, device)
    fmt = PromptFormat(tok)
    pad_id = tok.pad_token_id
    edits = load_edits(data, limit=n_edits)
    encoded = encode_edits(fmt, edits, None, need_rejected=True)
    cfgs = {m: EditConfig(**VARIANTS.get(m, dict(method=m)), batch_size=batch_size, grad_accum=grad_accum)
            for m in METHODS}
    torch.manual_seed(0)
    model = attach_new(base, cfgs["corsa"])
    params = trainable_parameters(model)
    with torch.no_grad():  # B = 0 at creation: move it so every gradient is a realistic one
        for p in params:
            p.add_(torch.randn_like(p) * 1e-3)
    start_state = [p.detach().clone() for p in params]
    group = micro_batches(encoded, batch_size, torch.Generator().manual_seed(0))[:grad_accum]
    t0 = time.perf_counter()
    ref = compute_reference(model, fmt, encoded, cfgs["corsa"], max(batch_size, 16))
    reference_s = time.perf_counter() - t0
    optimizers = {m: torch.optim.AdamW(params, lr=1e-4) for m in METHODS}
    # the last direction, kept from step to step (corsa-momentum: after the warm-up round every
    # measured step perturbs along it, as every step of an update but its first does)
    memories = {m: SamMemory() for m in METHODS}
    model.train()

    def one_step(method):
        gen = torch.Generator().manual_seed(0)
        cfg = cfgs[method]
        if method == "straightforward":
            straightforward_step(model, params, cfg, encoded, group, pad_id, gen)
        else:
            corsa_step(model, params, cfg, encoded, ref, group, pad_id, gen, None, memories[method])
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizers[method].step()
        optimizers[method].zero_grad(set_to_none=True)

    def restore():
        with torch.no_grad():
            for p, s in zip(params, start_state):
                p.copy_(s)

    times = {m: [] for m in METHODS}
    for r in range(warmup + steps):
        for m in METHODS:  # round-robin: a slow spell of the machine hits every method alike
            sync(device)
            t = time.perf_counter()
            one_step(m)
            sync(device)
            if r >= warmup:
                times[m].append(time.perf_counter() - t)
            restore()
    profile = profile_passes(model, params, encoded, group[0], pad_id, device, warmup + steps)
    resting = tensor_bytes(list(model.parameters()) + list(model.buffers()))
    resting += tensor_bytes(v for s in optimizers["corsa"].state.values() for v in s.values()
                            if torch.is_tensor(v))
    out = {}
    for m in METHODS:
        with PeakMemory(device) as mem:
            one_step(m)
        restore()
        out[m] = {"times_s": [round(t, 5) for t in times[m]], "median_s": statistics.median(times[m]),
                  "peak_step_mib": mem.peak / MiB, "peak_total_mib": (resting + mem.peak) / MiB}
    n_rows = sum(len(mb) for mb in group)
    tokens = sum(len(encoded[i].prompt) + len(encoded[i].chosen) for mb in group for i in mb)
    return {"methods": out, "profile": profile, "reference_once_s": reference_s, "resting_mib": resting / MiB,
            "batch": {"edits_per_step": n_rows, "micro_batches": grad_accum, "prompt_and_answer_tokens": tokens},
            "trainable_parameters": sum(p.numel() for p in params)}


def profile_passes(model, params, encoded, mb, pad_id, device, rounds: int) -> dict:
    """Where a step's time goes: forward and backward of lora's pass and of one CoRSA pass.

    A CoRSA step is two such passes (SAM), each one forward (the prompt once, both answers
    from its cache) and two backwards (∇L_DPO and ∇L_SFT); a lora step is one forward and one
    backward. `floor_corsa_over_lora` is the step ratio those parts alone imply.
    """
    lora_batch = collate([(encoded[i].prompt, encoded[i].chosen) for i in mb], pad_id).to(device)
    shared = collate_shared([encoded[i].prompt for i in mb],
                            [[encoded[i].chosen, encoded[i].rejected] for i in mb], pad_id).to(device)
    parts = {k: [] for k in ("lora/forward", "lora/backward", "corsa/forward", "corsa/backward_dpo",
                             "corsa/backward_sft")}

    def timed(key, fn):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        parts[key].append(time.perf_counter() - t)
        return out

    def forward(fn, batch):
        with autocast(device):
            return fn(model, batch)

    for _ in range(rounds):
        lp = timed("lora/forward", lambda: forward(score, lora_batch))
        timed("lora/backward", lambda: torch.autograd.grad(lp.sum(), params))
        lp = timed("corsa/forward", lambda: forward(score_shared, shared))
        timed("corsa/backward_dpo", lambda: torch.autograd.grad((lp[:, 0] - lp[:, 1]).sum(), params, retain_graph=True))
        timed("corsa/backward_sft", lambda: torch.autograd.grad(lp[:, 0].sum(), params))
    med = {k: statistics.median(v[1:] if len(v) > 1 else v) for k, v in parts.items()}
    lora = med["lora/forward"] + med["lora/backward"]
    corsa_pass = med["corsa/forward"] + med["corsa/backward_dpo"] + med["corsa/backward_sft"]
    return {"median_s": med, "corsa_pass_over_lora": corsa_pass / lora,
            "floor_corsa_over_lora": 2 * corsa_pass / lora,
            "tokens": {"lora": int(lora_batch.attention_mask.sum()),
                       "corsa": int(shared.prompt_mask.sum() + shared.answer_mask.sum())}}


def reliability(editor: Editor, edits) -> float:
    answers = generate(editor.model, editor.fmt, [e.prompt for e in edits], editor.config.max_new_tokens, 32)
    return sum(contains(a, e.target_new) for e, a in zip(edits, answers)) / len(edits)


def bench_time_to_edit(name: str, device, data: Path, n_edits: int, epochs: int, settings: dict) -> dict:
    """Wall time of one CoRSA update on `n_edits` edits: per-edit stopping against a fixed `epochs`.

    Both runs take the library's defaults (what `corsa edit` does) with `settings` over them;
    the per-edit run stops each edit when it holds (the default), the other trains every edit
    for `epochs` epochs. Each run's seconds are split into optimizer steps and the rest (hold
    tests, reference scores), and the per-edit run's passes say how many edits each trained.
    """
    edits = load_edits(data, limit=n_edits)
    out = {"edits": n_edits, "config": dict(settings, method="corsa", epochs=epochs)}
    runs = (("per_edit", dict(edit_stop=True)), ("fixed_epochs", dict(edit_stop=False, epochs=epochs)))
    for label, how in runs:
        base = load(name, device)
        editor = Editor(base, method="corsa", early_stop=False, progress=False, seed=42, **settings, **how)
        t = time.perf_counter()
        record = editor.update(edits)
        seconds = time.perf_counter() - t
        steps = [h for h in record.result.history if "time/step_s" in h]
        per_pass: dict[int, int] = {}
        for h in steps:
            per_pass[h["epoch"]] = per_pass.get(h["epoch"], 0) + h["edits"]
        step_s = sum(h["time/step_s"] for h in steps)
        out[label] = {"seconds": seconds, "epochs": record.result.epochs, "steps": record.result.steps,
                      "steps_s": step_s, "other_s": seconds - step_s,
                      "edit_steps": sum(per_pass.values()), "edits_per_pass": list(per_pass.values()),
                      "stopped_early": record.result.stopped_early, "reliability": reliability(editor, edits)}
        del editor, base
        gc.collect()
    return out


def ratios_and_targets(steps: dict | None, tte: dict | None) -> tuple[dict, dict]:
    ratios: dict[str, float] = {}
    targets: dict[str, tuple[float, float]] = {}
    if steps is not None:
        med = {m: v["median_s"] for m, v in steps["methods"].items()}
        peak = {m: v["peak_total_mib"] for m, v in steps["methods"].items()}
        step_peak = {m: v["peak_step_mib"] for m, v in steps["methods"].items()}
        ratios = {f"time/{m}_over_lora": med[m] / med["lora"] for m in METHODS if m != "lora"}
        ratios["time/corsa_over_straightforward"] = med["corsa"] / med["straightforward"]
        ratios.update({f"peak_total/{m}_over_lora": peak[m] / peak["lora"] for m in METHODS if m != "lora"})
        ratios.update({f"peak_step/{m}_over_lora": step_peak[m] / step_peak["lora"] for m in METHODS if m != "lora"})
        targets = {
            "corsa_step <= 0.6 x straightforward": (ratios["time/corsa_over_straightforward"], 0.6),
            "corsa_step <= 3.5 x lora": (ratios["time/corsa_over_lora"], 3.5),
            "cheaper sharpness step (corsa-reuse) <= 2.5 x lora": (ratios["time/corsa-reuse_over_lora"], 2.5),
            "cheaper sharpness step (corsa-momentum) <= 2.5 x lora": (ratios["time/corsa-momentum_over_lora"], 2.5),
            "corsa_peak_memory <= 1.5 x lora": (ratios["peak_total/corsa_over_lora"], 1.5),
        }
    if tte is not None:
        pe, fx = tte["per_edit"], tte["fixed_epochs"]
        ratios["time_to_edit/per_edit_over_fixed"] = pe["seconds"] / fx["seconds"]
        targets["per_edit_time <= 0.5 x fixed_epochs"] = (ratios["time_to_edit/per_edit_over_fixed"], 0.5)
        targets["per_edit_time <= 120 s"] = (pe["seconds"], 120.0)
        targets["per_edit_reliability >= fixed_epochs"] = (pe["reliability"] - fx["reliability"], 0.0)
    checked = {k: {"value": round(v, 4), "limit": lim,
                   "met": bool(v >= lim if k.endswith(">= fixed_epochs") else v <= lim)}
               for k, (v, lim) in targets.items()}
    return {k: round(v, 4) for k, v in ratios.items()}, checked


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="tiny model only: 2 steps, 8 edits, 3 epochs (seconds; a test runs this)")
    ap.add_argument("--models", default=None, help="comma-separated: tiny, smollm2-135m (default: both)")
    ap.add_argument("--steps", type=int, default=5, help="measured steps per method (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    ap.add_argument("--data", type=Path, default=COUNTERFACT, help="CounterFact edits (EasyEdit format)")
    ap.add_argument("--edits", type=int, default=64, help="CounterFact edits for time to edit")
    ap.add_argument("--epochs", type=int, default=10, help="the fixed number of epochs to compare against")
    ap.add_argument("--no-edit", action="store_true", help="skip the time-to-edit runs")
    ap.add_argument("--no-steps", action="store_true", help="skip the step time and memory (time to edit only)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast on CUDA)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (0: torch's choice). One by default: on a shared machine more "
                         "threads wait on each other and the figures scatter")
    ap.add_argument("--out", default="runs/benchmark.json", help="the JSON file to write")
    args = ap.parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        return run(args, argv)
    finally:
        torch.set_num_threads(threads)


def run(args, argv) -> dict:
    device = torch.device(args.device)
    if args.quick:
        models, args.steps, args.warmup, args.edits, args.epochs = ["tiny"], 2, 1, 8, 3
    else:
        models = (args.models or "tiny,smollm2-135m").split(",")
    result = {"command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "device": str(device),
                          "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
              "versions": library_versions(), "memory_method": PeakMemory.__doc__.split("\n\n")[0],
              "models": {}}
    for name in models:
        s = SETTINGS[name]
        t = time.perf_counter()
        steps = None
        if not args.no_steps:
            print(f"[{name}] step time and memory ...", flush=True)
            n_step_edits = max(args.edits, s["step"]["batch_size"] * s["step"]["grad_accum"])
            steps = bench_steps(name, device, args.data, args.steps, args.warmup, n_step_edits, **s["step"])
        tte = None
        if not args.no_edit:
            print(f"[{name}] time to edit {args.edits} edits ...", flush=True)
            tte = bench_time_to_edit(name, device, args.data, args.edits, args.epochs, s["edit"])
        ratios, targets = ratios_and_targets(steps, tte)
        result["models"][name] = {"settings": s, "step": steps, "time_to_edit": tte, "ratios": ratios, "targets": targets,
                                  "seconds": time.perf_counter() - t}
        print(format_table(name, result["models"][name]), flush=True)
        atomic_write_json(args.out, result)  # after each model, so a long run keeps what it finished
    print(f"wrote {args.out}")
    return result


def format_table(name: str, r: dict) -> str:
    lines = [f"{name}:"]
    if r["step"]:
        steps = r["step"]["methods"]
        lines = [f"{name}: {r['step']['batch']['edits_per_step']} edits per step",
                 f"{'method':16} {'step s':>8} {'× lora':>7} {'peak MiB':>9} {'× lora':>7} {'step MiB':>9}"]
        for m, v in steps.items():
            lines.append(f"{m:16} {v['median_s']:8.3f} {v['median_s'] / steps['lora']['median_s']:7.2f} "
                         f"{v['peak_total_mib']:9.1f} {v['peak_total_mib'] / steps['lora']['peak_total_mib']:7.2f} "
                         f"{v['peak_step_mib']:9.1f}")
        p = r["step"]["profile"]
        lines.append("profile (s): " + ", ".join(f"{k} {v:.3f}" for k, v in p["median_s"].items())
                     + f"; corsa pass / lora = {p['corsa_pass_over_lora']:.2f}, so a SAM step is at least "
                     f"{p['floor_corsa_over_lora']:.2f} x lora")
    if r["time_to_edit"]:
        for k in ("per_edit", "fixed_epochs"):
            v = r["time_to_edit"][k]
            lines.append(f"time to edit, {k:12}: {v['seconds']:7.1f} s ({v['steps_s']:.1f} in steps), "
                         f"{v['epochs']} epochs, {v['edit_steps']} edit-steps, reliability {v['reliability']:.3f}")
    lines += [f"  {'met ' if v['met'] else 'MISS'} {k}: {v['value']}" for k, v in r["targets"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
