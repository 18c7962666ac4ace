"""How fast `corsa bench` evaluates, and what share of a bench is evaluation, read from its files.

After update k a bench evaluates every edit seen so far (method.md §6): one batched greedy pass
over every distinct prompt (edit prompts, rephrasings, locality probes) and one teacher-forced
pass over every answer scored. This reads each (method, update)'s eval.json: its seconds, the
prompts it generated for, prompts per second, and the training seconds beside it; and the
unedited model's evaluation (base.json). Evaluating grows with k while an update's training does
not, which is where a long stream's cost stops being linear.

With ``--plot`` it draws the bench against the number of updates, one line per method: each
update's training and evaluation seconds, the bench's time so far, and the process's peak memory.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/eval_share.py runs/cf60-editors --out benchmarks/eval-share.json
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/eval_share.py runs/stream-40x10 --out benchmarks/bench-updates.json \
        --plot benchmarks/bench-updates.png
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path


def prompts_of(records: list[dict]) -> int:
    """Distinct prompts one evaluation generates for (each prompt is asked once)."""
    seen = set()
    for r in records:
        seen.add(r["prompt"])
        seen.update(p["prompt"] if isinstance(p, dict) else p for p in r.get("paraphrases", []))
        seen.update(p["prompt"] if isinstance(p, dict) else p for p in r.get("locality", []))
    return len(seen)


def collect(run: Path) -> dict:
    base = json.loads((run / "base.json").read_text())
    rows = []
    for method_dir in sorted(p for p in run.iterdir() if (p / "update-1" / "eval.json").exists()):
        for update in sorted(method_dir.glob("update-*"), key=lambda p: int(p.name.split("-")[1])):
            ev = json.loads((update / "eval.json").read_text())
            n = prompts_of(ev["records"])
            rows.append({"method": method_dir.name, "update": ev["update"], "edits": len(ev["records"]),
                         "prompts": n, "eval_s": round(ev["eval_seconds"], 1),
                         "prompts_per_s": round(n / ev["eval_seconds"], 2), "train_s": round(ev["train"]["seconds"], 1),
                         "peak_rss_mb": ev.get("peak_rss_mb")})
    evaluating = sum(r["eval_s"] for r in rows) + base["seconds"]
    training = sum(r["train_s"] for r in rows)
    return {"run": str(run), "rows": rows, "base_eval_s": round(base["seconds"], 1),
            "eval_share": round(evaluating / (evaluating + training), 3),
            "eval_share_by_method": {m: round(e / (e + t), 3) for m in {r["method"] for r in rows}
                                     for e, t in [(sum(r["eval_s"] for r in rows if r["method"] == m),
                                                   sum(r["train_s"] for r in rows if r["method"] == m))]}}


def plot(run: dict, path: Path) -> None:
    """The bench against the number of updates K: per update, the bench so far, peak memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    methods = list(dict.fromkeys(r["method"] for r in run["rows"]))
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 4))
    for i, m in enumerate(methods):
        rows = sorted((r for r in run["rows"] if r["method"] == m), key=lambda r: r["update"])
        k = [r["update"] for r in rows]
        colour = f"C{i}"
        a.plot(k, [r["train_s"] for r in rows], "-o", color=colour, label=f"{m}: training")
        a.plot(k, [r["eval_s"] for r in rows], "--s", color=colour, label=f"{m}: evaluation")
        total, so_far = 0.0, []
        for r in rows:
            total += r["train_s"] + r["eval_s"]
            so_far.append(total)
        b.plot(k, so_far, "-o", color=colour, label=m)
        if all(r["peak_rss_mb"] for r in rows):
            c.plot(k, [r["peak_rss_mb"] / 1024 for r in rows], "-o", color=colour, label=m)
    a.set(xlabel="update k", ylabel="seconds", title="update k: training and evaluation")
    b.set(xlabel="updates K", ylabel="seconds", title="the bench after K updates (base evaluation left out)")
    c.set(xlabel="update k", ylabel="GiB", title="peak resident memory of the process")
    c.set_ylim(bottom=0)
    for ax in (a, b, c):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="corsa bench output folders")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--plot", type=Path, help="PNG of the first run against the number of updates")
    args = p.parse_args()
    from corsa.files import atomic_write_json
    from corsa.machine import library_versions

    runs = [collect(run) for run in args.runs]
    atomic_write_json(args.out, {"runs": runs, "machine": {"processor": platform.processor() or platform.machine(),
                                                          "python": platform.python_version()},
                                 "versions": library_versions()})
    if args.plot:
        plot(runs[0], args.plot)
    for run in runs:
        print(f"{run['run']}: evaluation is {100 * run['eval_share']:.0f}% of the bench's time "
              f"(base {run['base_eval_s']} s)")
        for r in run["rows"]:
            print(f"  {r['method']:10} update {r['update']}: {r['edits']} edits, {r['prompts']} prompts in "
                  f"{r['eval_s']} s ({r['prompts_per_s']}/s); training {r['train_s']} s")


if __name__ == "__main__":
    main()
