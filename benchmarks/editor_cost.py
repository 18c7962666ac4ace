"""What ROME, MEMIT and AlphaEdit cost on this machine, read from the step logs of `corsa bench` runs.

Every locate-then-edit update logs its parts (corsa.editors.apply): the key statistics (a one-off
per model, layer and corpus; 0 when they come from the cache), the target vectors (the bulk:
an optimisation through the model per edit), and the rest (keys, the closed-form solves, writing
the adapter). This collects them per method and update into one JSON, with seconds per edit.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/editor_cost.py runs/cf60-editors runs/editors-60x1 \\
        --out benchmarks/editor-cost.json
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path


def collect(run: Path) -> list[dict]:
    """One row per (method, update) of a bench folder whose method is a locate-then-edit row."""
    from corsa.methods import METHODS

    rows = []
    for method_dir in sorted(p for p in run.iterdir() if p.is_dir() and p.name in METHODS):
        if METHODS[method_dir.name].solver is None:
            continue
        for update in sorted(method_dir.glob("update-*"), key=lambda p: int(p.name.split("-")[1])):
            log = [json.loads(line) for line in (update / "log.jsonl").read_text().splitlines() if line.strip()]
            last = next(h for h in reversed(log) if "time/step_s" in h)
            n = sum(1 for h in log if "edit" in h)
            total, stats, targets = last["time/step_s"], last["time/stats_s"], last["time/targets_s"]
            rows.append({"run": str(run), "method": method_dir.name, "update": int(update.name.split("-")[1]),
                         "edits": n, "seconds": round(total, 1), "statistics_s": round(stats, 1),
                         "targets_s": round(targets, 1), "rest_s": round(total - stats - targets, 1),
                         "seconds_per_edit_without_statistics": round((total - stats) / n, 2),
                         "target_reached": round(last["locate/target_reached"], 3)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="corsa bench output folders")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    from corsa.files import atomic_write_json
    from corsa.machine import library_versions

    rows = [r for run in args.runs for r in collect(run)]
    one_off = [r for r in rows if r["statistics_s"] > 1]
    atomic_write_json(args.out, {
        "rows": rows,
        "statistics_one_off_s": {f'{r["run"]}:{r["method"]}': r["statistics_s"] for r in one_off},
        "machine": {"processor": platform.processor() or platform.machine(), "python": platform.python_version()},
        "versions": library_versions(),
    })
    for r in rows:
        print(f'{r["method"]:10} update {r["update"]}: {r["edits"]} edits, {r["seconds"]} s '
              f'(statistics {r["statistics_s"]}, targets {r["targets_s"]}, rest {r["rest_s"]}), '
              f'{r["seconds_per_edit_without_statistics"]} s per edit')


if __name__ == "__main__":
    main()
