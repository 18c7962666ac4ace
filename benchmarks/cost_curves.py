"""What one update costs as it grows: wall time and peak memory against the number of edits.

Each (method, n) runs in a process of its own (so its peak resident memory is its own): SmolLM2,
the first n CounterFact edits (y⁻ = their ground truth), one fixed epoch (per-edit stopping off,
so every size does the same work per edit), 8 edits per step. Writes a JSON and a PNG.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/cost_curves.py --sizes 16,64,256 --out benchmarks/cost-curves.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COUNTERFACT = ROOT.parent / "shared" / "data" / "counterfact" / "easyedit" / "counterfact-edit.json"


def one(method: str, n: int, data: str, model: str) -> dict:
    """Run in the child: one update of n edits, timed."""
    from corsa import Editor
    from corsa.loaders import load_edits

    edits = load_edits(data, limit=n, on_invalid="skip")
    editor = Editor(model, method=method, epochs=1, edit_stop=False, progress=False)
    started = time.perf_counter()
    record = editor.update(edits)
    seconds = time.perf_counter() - started
    return {"method": method, "edits": n, "seconds": round(seconds, 2), "steps": record.result.steps,
            "seconds_per_edit": round(seconds / n, 3),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for method in sorted({r["method"] for r in rows}):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["edits"])
        xs = [r["edits"] for r in mine]
        axes[0].plot(xs, [r["seconds"] for r in mine], marker="o", label=method)
        axes[1].plot(xs, [r["peak_rss_mib"] for r in mine], marker="o", label=method)
    for ax, label in zip(axes, ("seconds for one update (1 epoch)", "peak resident memory, MiB")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("edits in the update")
        ax.set_title(label)
    axes[0].set_yscale("log")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="16,64,256")
    p.add_argument("--methods", default="lora,corsa")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default=str(COUNTERFACT))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--append", action="store_true", help="keep the rows already in --out (other sizes)")
    p.add_argument("--child", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(one(args.child[0], int(args.child[1]), args.data, args.model)))
        return
    rows = json.loads(args.out.read_text())["rows"] if args.append and args.out.exists() else []
    for method in args.methods.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            done = subprocess.run([sys.executable, __file__, "--child", method, str(n), "--data", args.data,
                                   "--model", args.model, "--out", str(args.out)], capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(done.stderr[-3000:])
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    png = args.out.with_suffix(".png")
    plot(rows, png)
    from corsa.files import atomic_write_json
    from corsa.machine import library_versions

    atomic_write_json(args.out, {"rows": rows, "plot": png.name, "threads": "torch default",
                                 "machine": {"processor": platform.processor() or platform.machine()},
                                 "versions": library_versions()})


if __name__ == "__main__":
    main()
