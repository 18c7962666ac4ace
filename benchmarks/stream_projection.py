"""What a longer stream would cost, projected from a bench's measured per-update cost curve.

    .venv/bin/python benchmarks/stream_projection.py runs/cf1000x20 --method corsa-lifelong \\
        --out benchmarks/stream-projection.json

Reads the training seconds of every finished update (``METHOD/update-k/eval.json``) and the
edits the adapter held before it (and lists each update's headline metrics: the stream so far,
while it runs), fits training seconds = a + b·held by least squares, and
projects streams of 10,000 and 100,000 edits in updates of the same size on the same machine:
the sum of a + b·held over their updates. Evaluation is left out (with ``--earlier-sample`` it
is one sample and the update's own edits per update, plus a last evaluation of every edit). The
GPU line is on paper: the CPU figures divided by ``--gpu-speedup`` (an assumption, stated in the
JSON), not a measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from corsa.files import atomic_write_json  # noqa: E402


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares a, b of y = a + b·x."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return my - b * mx, b


def project(a: float, b: float, total: int, size: int) -> float:
    """Σ over the updates of a stream of `total` edits in updates of `size`: a + b·(edits held before it)."""
    return sum(a + b * size * k for k in range(total // size))


def row(ev: dict, held: int) -> dict:
    """One update of the stream as measured after it: the edits held, training, and the headline
    metrics (retention: the mean over the earlier updates of their generated reliability, on the
    sample measured when --earlier-sample was given)."""
    m = ev["metrics"]
    earlier = [u["metrics"]["generated/reliability"] for u in ev["per_update"][:-1]]
    pick = lambda key: None if m.get(key) is None else round(100 * m[key], 1)  # noqa: E731
    return {"update": ev["update"], "held": held, "train_seconds": round(ev["train"]["seconds"], 1),
            "steps": ev["train"]["steps"], "eval_seconds": round(ev["eval_seconds"], 1),
            "peak_rss_mb": ev["peak_rss_mb"], "measured_edits": ev["counts"]["edits"],
            "retention": round(100 * sum(earlier) / len(earlier), 1) if earlier else None,
            "own_update_reliability": round(100 * ev["per_update"][-1]["metrics"]["generated/reliability"], 1),
            "reliability": pick("generated/reliability"), "generality": pick("generated/generality"),
            "locality": pick("generated/locality"), "locality_tf": pick("teacher_forced/locality"),
            "subject_locality": pick("generated/subject_locality"), "hijack": pick("generated/hijack")}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bench", type=Path, help="a bench folder (corsa bench --out)")
    p.add_argument("--method", default="corsa-lifelong")
    p.add_argument("--gpu-speedup", type=float, default=30.0,
                   help="assumed training speed of one GPU over the 2 CPU cores (not measured here)")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    evals = []
    k = 1
    while (a.bench / a.method / f"update-{k}" / "eval.json").exists():
        evals.append(json.loads((a.bench / a.method / f"update-{k}" / "eval.json").read_text()))
        k += 1
    if len(evals) < 3:
        raise SystemExit(f"{a.bench / a.method}: {len(evals)} finished updates; at least 3 are needed for a fit")
    sizes = [len(e["edit_ids"]) for e in evals]
    held = [sum(sizes[:i]) for i in range(len(evals))]
    seconds = [e["train"]["seconds"] for e in evals]
    # update 1 holds nothing yet and has no history to test: the curve is fitted from update 2 on
    ca, cb = fit(held[1:], seconds[1:])
    size = sizes[-1]
    doc = {"command": " ".join(["benchmarks/stream_projection.py", *(argv if argv is not None else sys.argv[1:])]),
           "bench": str(a.bench), "method": a.method, "updates_measured": len(evals), "update_size": size,
           "held_before": held, "train_seconds": [round(s, 1) for s in seconds],
           "updates": [row(e, h + n) for e, h, n in zip(evals, held, sizes)],
           "fit": {"a_seconds": round(ca, 2), "b_seconds_per_held_edit": round(cb, 5),
                   "what": "training seconds of an update = a + b · edits held before it, from update 2 on"},
           "projection_cpu_hours": {str(n): round(project(ca, cb, n, size) / 3600, 1) for n in (1000, 10_000, 100_000)},
           "last_update_cpu_minutes": {str(n): round((ca + cb * (n - size)) / 60, 1) for n in (1000, 10_000, 100_000)},
           "gpu_speedup_assumed": a.gpu_speedup,
           "projection_gpu_hours": {str(n): round(project(ca, cb, n, size) / 3600 / a.gpu_speedup, 2)
                                    for n in (1000, 10_000, 100_000)}}
    atomic_write_json(a.out, doc)
    print(json.dumps({k: doc[k] for k in ("fit", "projection_cpu_hours", "last_update_cpu_minutes",
                                          "projection_gpu_hours")}, indent=1))
    return doc


if __name__ == "__main__":
    main()
