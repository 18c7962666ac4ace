"""What a stream of updates costs to train, method against method, side by side in one run.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/stream_cost.py --out benchmarks/stream-cost.json

The edits are the ones `corsa bench --edits 100 --updates 10 --seed 0` chooses (the 10 × 10
stream of docs/results.md), y⁻ filled the same way. Every method trains the same updates in
turn, update 1 of each, then update 2 of each, …, so a slow spell of a shared machine hits them
alike; nothing is evaluated. For every update the JSON holds the training seconds and where
they went (optimizer steps, DPO reference scoring, hold tests, the rest), the steps and passes,
and the ratio of each method's time to the first method's. `--tiny` runs the same on the tiny
test model in seconds (tests/test_benchmarks.py).

`update_seconds` is the whole Editor.update as a user waits for it (what it prepares before
training: replayed edits, negatives, the anchors and their unedited answers), `seconds` the
training alone. The breakdown comes from timing corsa.engine's functions as the update calls them; it is
measured, not inferred.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from corsa import Editor, engine  # noqa: E402
from corsa import old_answers  # noqa: E402
from corsa.comparison.spec import parse_sets, select  # noqa: E402
from corsa.updates import split_in_order  # noqa: E402
from corsa.files import atomic_write_json  # noqa: E402
from corsa.machine import library_versions  # noqa: E402
from corsa.loaders import load_edits  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "counterfact" / "easyedit" / "counterfact-edit.json"
PARTS = {"steps": "corsa_step", "reference": "compute_reference", "hold_tests": "holding"}


@contextlib.contextmanager
def timed_parts(seconds: dict):
    """Add the wall time of each engine function in PARTS to `seconds[part]` while inside."""
    saved = {name: getattr(engine, name) for name in PARTS.values()}

    def wrap(part, fn):
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[part] += time.perf_counter() - t
        return timed

    for part, name in PARTS.items():
        setattr(engine, name, wrap(part, saved[name]))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(engine, name, fn)


def stream(model, data: Path, n_edits: int, n_updates: int, seed: int):
    """The bench's edits for these settings, y⁻ filled by the unedited model, split into updates."""
    from corsa.models import load_model
    from corsa.prompts import PromptFormat

    base, tok = load_model(model) if isinstance(model, str) else model
    edits = select(load_edits(data, on_invalid="skip"), n_edits, seed)
    edits = old_answers.fill(base, PromptFormat(tok, "auto"), edits, 16)
    return split_in_order(edits, n_updates)


def run(make_model, updates, methods: list[str], seed: int, per_method: dict | None = None, **overrides) -> dict:
    """Train `updates` with every method in turn; `make_model()` gives each method its own base model.

    `per_method[m]` holds options for method m alone (`--set m.option=value`, as in `corsa bench`).
    A row "LABEL=METHOD" trains METHOD under the name LABEL, with LABEL's options, so one method
    runs beside itself with other options (`before=corsa-lifelong --set before.preserve=0`).
    """
    per_method = per_method or {}
    row = {label: method or label for label, _, method in (m.partition("=") for m in methods)}
    methods = list(row)
    editors = {m: Editor(make_model(), method=row[m], seed=seed, progress=False,
                         **{**overrides, **per_method.get(m, {})}) for m in methods}
    rows = {m: [] for m in methods}
    for k, edits in enumerate(updates):
        for m, editor in editors.items():
            parts = dict.fromkeys(PARTS, 0.0)
            wall = time.perf_counter()
            with timed_parts(parts):
                record = editor.update(edits)
            wall = time.perf_counter() - wall  # the update as a user waits for it: its plan (anchors …) too
            r = record.result
            parts["other"] = r.seconds - sum(parts.values())
            rows[m].append({"update": k + 1, "seconds": round(r.seconds, 3), "update_seconds": round(wall, 3),
                            "steps": r.steps, "passes": r.epochs,
                            "edits_trained": len(edits) + len(record.replayed),
                            **{f"{p}_s": round(v, 3) for p, v in parts.items()}})
            print(f"update {k + 1} · {m}: {r.seconds:.1f} s, {r.steps} steps, {r.epochs} passes "
                  f"({', '.join(f'{p} {v:.1f}' for p, v in parts.items())})", flush=True)
    first = methods[0]
    out = {}
    for m in methods:
        total = sum(u["seconds"] for u in rows[m])
        out[m] = {"updates": rows[m], "train_seconds": round(total, 3),
                  "update_seconds": round(sum(u["update_seconds"] for u in rows[m]), 3),
                  **{f"{p}_s": round(sum(u[f"{p}_s"] for u in rows[m]), 3) for p in [*PARTS, "other"]}}
    for m in methods:
        out[m][f"ratio_to_{first}"] = round(out[m]["train_seconds"] / out[first]["train_seconds"], 3)
        out[m][f"update_ratio_to_{first}"] = round(out[m]["update_seconds"] / out[first]["update_seconds"], 3)
        half = len(updates) // 2  # the second half of the stream, where most edits are held
        late = lambda x: sum(u["seconds"] for u in rows[x][half:])  # noqa: E731
        out[m][f"ratio_to_{first}_second_half"] = round(late(m) / late(first), 3)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--methods", default="corsa,corsa-lifelong",
                   help="the first is the one ratios are to; LABEL=METHOD runs METHOD under the name LABEL")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--edits", type=int, default=100)
    p.add_argument("--updates", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's choice)")
    p.add_argument("--tiny", action="store_true", help="the tiny test model, 6 edits in 3 updates: seconds")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.OPTION=VALUE",
                   help="an option for one method only, as in corsa bench (repeatable)")
    a = p.parse_args(argv)
    labels = {m.strip().partition("=")[0]: m.strip().partition("=")[2] for m in a.methods.split(",") if "=" in m}
    per_method = {}
    for item in a.set:  # LABEL.option=value is checked as METHOD.option=value, kept under LABEL
        head = item.partition(".")[0]
        for method, options in parse_sets([labels.get(head, head) + item[len(head):]]).items():
            per_method.setdefault(head if head in labels else method, {}).update(options)
    if a.threads:
        torch.set_num_threads(a.threads)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    t0 = time.perf_counter()
    if a.tiny:
        from corsa.testing import tiny_llama

        make_model = lambda: tiny_llama(seed=0)  # noqa: E731
        settings = {"model": "tiny", "edits": 6, "updates": 3}
        updates = stream(make_model(), a.data, 6, 3, a.seed)
        overrides = {"epochs": 3, "batch_size": 2}
    else:
        make_model = lambda: "smollm2-135m"  # noqa: E731
        settings = {"model": "smollm2-135m", "edits": a.edits, "updates": a.updates}
        updates = stream(make_model(), a.data, a.edits, a.updates, a.seed)
        overrides = {}
    results = run(make_model, updates, methods, a.seed, per_method, **overrides)
    doc = {"command": " ".join(["benchmarks/stream_cost.py", *(argv if argv is not None else sys.argv[1:])]),
           "settings": {**settings, "data": str(a.data), "seed": a.seed, "methods": methods, "set": per_method},
           "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                       "torch_threads": torch.get_num_threads()},
           "versions": library_versions(), "methods": results, "seconds": round(time.perf_counter() - t0, 1)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(a.out, doc)
    return doc


if __name__ == "__main__":
    main()
