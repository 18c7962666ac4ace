"""The bench's outputs for people: results.csv, report.md (the comparison table) and PNG plots.

Everything is drawn from the results alone, read through their schema
(:class:`corsa.comparison.results.BenchResults`, which also reads a ``results.json`` dict), so a
report can be rebuilt from the file. Plots use matplotlib's object API with the Agg canvas (no
pyplot, no global backend), and every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path

from .comparison.results import BenchResults, MethodResults
from .files import atomic_write_text
from .metrics import contains
from .text import fmt_metric, show_table

# (column, where the value is in a method's results, kind)
COLUMNS = [
    ("reliability", ("final", "reliability"), "pct"),
    ("generality", ("final", "generality"), "pct"),
    ("locality", ("final", "locality"), "pct"),
    ("locality (tf)", ("final", "locality_tf"), "pct"),
    ("subject loc.", ("final", "subject_locality"), "pct"),
    ("hijack", ("final", "hijack"), "pct"),
    ("mention", ("final", "mention"), "pct"),
    ("subject KL", ("final", "subject_kl"), "nat"),
    ("efficacy", ("final", "efficacy"), "pct"),
    ("margin", ("final", "margin_mean"), "num"),
    ("update eff.", ("update_efficacy",), "pct"),
    ("retention", ("retention_final",), "pct"),
    ("forgetting", ("forgetting",), "pct"),
    ("forgetting vs lora", ("relative_forgetting_reduction",), "rel"),
    ("forgetting (tf)", ("teacher_forced", "forgetting"), "pct"),
    ("train s", ("train_seconds",), "sec"),
]


def _get(entry: MethodResults | dict, path: tuple):
    """The value at `path`: a MethodResults field (or the base's key), then keys of the dicts inside."""
    first, *rest = path
    d = getattr(entry, first) if isinstance(entry, MethodResults) else entry.get(first)
    for key in rest:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def fmt_value(value, kind: str) -> str:
    if value is None:
        return "–"
    if kind == "pct":
        return f"{100 * value:.1f}"
    if kind == "rel":
        return f"{100 * value:+.1f}%"
    if kind == "sec":
        return f"{value:.0f}"
    if kind == "nat":
        return f"{value:.2f}"
    return f"{value:+.2f}"


def table(results: BenchResults | dict) -> tuple[list[str], list[list[str]]]:
    """The comparison: methods as rows (the unedited model first), headline numbers as columns."""
    results = BenchResults.of(results)
    header = ["method"] + [c for c, _, _ in COLUMNS]
    rows = [["base (unedited)"] + [fmt_value(_get(results.base, p) if p[0] == "final" else None, k)
                                   for _, p, k in COLUMNS]]
    for name, res in results.methods.items():
        rows.append([name] + [fmt_value(_get(res, p), k) for _, p, k in COLUMNS])
    return header, rows


def text_table(results: BenchResults | dict) -> str:
    header, rows = table(results)
    return show_table(rows, header, numbers=True)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])


def _matrix_table(R: list[list[float]], K: int) -> str:
    """A lower-triangular retention matrix as a Markdown table, in %."""
    head = ["after \\ on"] + [f"U{j + 1}" for j in range(K)]
    body = [[f"U{k + 1}"] + [fmt_value(R[k][j], "pct") if j <= k else "" for j in range(K)] for k in range(K)]
    return _md_table(head, body)


def protocol_line(results: BenchResults) -> str:
    g, t = results.protocol["generated"], results.protocol["teacher_forced"]
    return (f"**generated**: {g['decoding']} decoding, up to {g['max_new_tokens']} new tokens, {g['template']} "
            f"template, answers matched as {g['match']}; locality {g['locality']}. "
            f"**teacher-forced**: {t['score']}, {t['template']} template.")


def markdown(results: BenchResults | dict, plots: dict[str, str]) -> str:
    results = BenchResults.of(results)
    header, rows = table(results)
    K, s = results.n_updates, results.settings
    parts = [
        f"# corsa bench: {s['model']} on {Path(s['data']).name}",
        "",
        f"{s['n_edits']} edits (seed {s['seed']}) in {K} update{'s' if K > 1 else ''} of "
        f"{results.update_sizes[0]}; every method trains one adapter update after update and is evaluated "
        f"on all edits seen so far after each (method.md §6).",
        "",
        _md_table(header, rows),
        "",
        "Columns, in % unless noted, after the last update: reliability, generality (all paraphrases) and locality "
        "(answer unchanged from the unedited model's) are **generated**; locality (tf) (ROME's neighbourhood score: "
        "the probe's gold answer, or the unedited model's answer where it has none, still beats y⁺), efficacy "
        "(fraction of margins > 0) and margin (mean of log p(y⁺|x) − log p(y⁻|x), nats) are **teacher-forced**. "
        "On questions about each edited subject that do not ask the edited fact (\"What is {subject}?\", "
        "corsa.subjects): subject loc. (the answer keeps the unedited model's manner: at least half its words, "
        "no loop), hijack (the answer is an edit's y⁺ alone) and mention (it names y⁺ where the unedited answer "
        "did not) are **generated**; subject KL (nats per token, along the unedited answer) is **teacher-forced**. "
        "Update efficacy (mean of R[k][k]), retention (mean of R[K][j], j < K) and forgetting (mean of R[j][j] − R[K][j], points) come from the "
        "retention matrix R of generated reliability; \"forgetting vs lora\" is 1 − forgetting / forgetting of lora "
        "(higher is better); \"forgetting (tf)\" is forgetting on the teacher-forced matrix (efficacy: is y⁺ still "
        "ranked above y⁻?); train s is training wall time summed over updates.",
        "",
        "Protocols — " + protocol_line(results),
        "",
        "## Retention matrices (generated reliability, %)",
        "",
        "Row k: after update k; column j: on the edits of update j.",
        "",
    ]
    for name, res in results.methods.items():
        parts += [f"### {name}", "", _matrix_table(res.retention, K), ""]
        if res.retention_teacher_forced:
            parts += ["Teacher-forced (efficacy, %):", "", _matrix_table(res.retention_teacher_forced, K), ""]
    lost = {n: r.lost_edits for n, r in results.methods.items() if r.lost_edits}
    if lost:
        never = any("never_took" in c for c in lost.values())
        head = ["method", "earlier edits", "kept y⁺"] + ["never took"] * never + [
            "lost", "to y⁻", "to another edit's y⁺", "elsewhere"]
        body = [[n, str(c["edits"]), str(c["kept"])] + [str(c.get("never_took", "–"))] * never
                + [str(c["lost"]), str(c["to_old_answer"]), str(c["to_another_edit"]), str(c["elsewhere"])]
                for n, c in lost.items()]
        parts += ["## Where the earlier updates' edits went", "",
                  "After the last update, the edits of updates 1 … K−1 by their greedy answer: still y⁺, never "
                  "taken (not y⁺ even right after their own update), or lost: back to the old answer y⁻ (the prior "
                  "won), taken over by another edit's y⁺ (edits interfering), or elsewhere.", "",
                  _md_table(head, body), ""]
    parts += ["## All metrics after the last update", ""]
    keys = list(results.base["metrics"])
    for res in results.methods.values():
        keys += [k for k in res.metrics if k not in keys]
    names = list(results.methods)
    body = [[k, fmt_metric(results.base["metrics"].get(k), k)]
            + [fmt_metric(results.methods[n].metrics.get(k), k) for n in names] for k in keys]
    parts += [_md_table(["metric", "base"] + names, body), ""]
    resources = [[n, fmt_value(r.train_seconds, "sec"), fmt_value(r.eval_seconds, "sec"), str(r.steps),
                  f"{r.peak_rss_mb:.0f}", "–" if r.peak_gpu_mb is None else f"{r.peak_gpu_mb:.0f}"]
                 for n, r in results.methods.items()]
    parts += ["## Cost", "", _md_table(["method", "train s", "eval s", "steps", "peak RSS MiB", "peak GPU MiB"],
                                       resources), "",
              "Peak RSS is the whole process's (ru_maxrss) when the method finished, so it includes earlier methods.",
              ""]
    if plots:
        parts += ["## Plots", ""] + [f"![{title}]({name})" for title, name in plots.items()] + [""]
    parts += _answers_section(results)
    return "\n".join(parts)


def _cell(text, width: int = 40) -> str:
    """An answer in a Markdown table cell: one line, pipes escaped, cut to `width` characters."""
    text = " ".join(str(text or "").split()).replace("|", "\\|")
    return text if len(text) <= width else text[:width - 1] + "…"


def _answers_section(results: BenchResults) -> list[str]:
    """Per method, every edit's greedy answer before editing and after each update (✓: contains y⁺)."""
    base = results.base.get("answers") or {}
    methods = {n: r.answers for n, r in results.methods.items() if r.answers}
    if not methods:
        return []
    K = results.n_updates
    parts = ["## What each edit answers", "",
             "The greedy answer to each edit prompt, unedited and after every update from the edit's own; "
             "✓ marks an answer that contains y⁺.", ""]
    for name, rows in methods.items():
        head = ["edit", "prompt", "y⁺", "y⁻", "unedited"] + [f"after U{k + 1}" for k in range(K)]
        body = []
        for row in rows:
            mark = lambda a: ("✓ " if contains(a, row["target_new"]) else "") + _cell(a, 30)  # noqa: E731
            after = [""] * (row["from_update"] - 1) + [mark(a) for a in row["after"]]
            body.append([_cell(row["id"], 20), _cell(row["prompt"]), _cell(row["target_new"], 20),
                         _cell(row["target_old"], 20), _cell(base.get(row["id"]), 30)] + after + [""] * (K - len(after)))
        parts += [f"### {name}", "", _md_table(head, body), ""]
    return parts


def rows_csv(results: BenchResults | dict) -> list[list]:
    """One row per method × update × metric (the unedited model is update 0 of `base`)."""
    results = BenchResults.of(results)
    out = [["method", "update", "metric", "protocol", "value"]]

    def add(method, update, metric, value, protocol=None):
        out.append([method, update, metric, protocol or metric.split("/")[0], "" if value is None else value])

    for key, value in results.base["metrics"].items():
        add("base", 0, key, value)
    K = results.n_updates
    summary_keys = ("update_efficacy", "retention_final", "forgetting", "relative_forgetting_reduction")
    for name, res in results.methods.items():
        for row in res.per_update:
            k = row["update"]
            for key, value in row["metrics"].items():
                add(name, k, key, value)
            for j, value in enumerate(res.retention[k - 1]):
                add(name, k, f"retention/update-{j + 1}", value, "generated")
            if res.retention_teacher_forced:
                for j, value in enumerate(res.retention_teacher_forced[k - 1]):
                    add(name, k, f"retention_teacher_forced/update-{j + 1}", value, "teacher_forced")
        for key in summary_keys:
            add(name, K, f"summary/{key}", getattr(res, key), "generated")
        if res.teacher_forced is not None:
            for key in summary_keys:
                add(name, K, f"summary_teacher_forced/{key}", res.teacher_forced[key], "teacher_forced")
    return out


# ---------------------------------------------------------------------------------------------
# plots


def save_figure(fig, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(buf.getvalue())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def plot_retention(name: str, R: list[list[float]], path: Path) -> None:
    import numpy as np
    from matplotlib.figure import Figure

    K = len(R)
    grid = np.full((K, K), np.nan)
    for k, row in enumerate(R):
        grid[k, :k + 1] = row
    fig = Figure(figsize=(1.2 * K + 2.2, 1.1 * K + 1.6))
    ax = fig.add_subplot()
    im = ax.imshow(grid * 100, vmin=0, vmax=100, cmap="viridis")
    for k in range(K):
        for j in range(k + 1):
            ax.text(j, k, f"{100 * grid[k, j]:.0f}", ha="center", va="center",
                    color="white" if grid[k, j] < 0.6 else "black")
    ax.set_xticks(range(K), [f"U{j + 1}" for j in range(K)])
    ax.set_yticks(range(K), [f"after U{k + 1}" for k in range(K)])
    ax.set_xlabel("reliability on the edits of update")
    ax.set_title(f"{name}: retention (generated reliability, %)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    save_figure(fig, path)


def plot_forgetting(results: BenchResults, path: Path) -> None:
    from matplotlib.figure import Figure

    K = results.n_updates
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for name, res in results.methods.items():
        ax.plot(range(1, K + 1), [100 * row[0] for row in res.retention], marker="o", label=name)
    ax.set_xticks(range(1, K + 1))
    ax.set_xlabel("after update")
    ax.set_ylabel("reliability on update 1 (%)")
    ax.set_ylim(-5, 105)
    ax.set_title("Forgetting: what is left of the first update")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def stream_series(res: MethodResults, sizes: list[int]) -> dict[str, list]:
    """Per update k of one method: the edits held after it, the retention of the earlier updates' edits
    (the mean of R[k][j] over j < k; None after the first update), generality on the edits measured
    after it, and its training seconds."""
    held = [sum(sizes[:k + 1]) for k in range(len(res.retention))]
    retention = [sum(row[:-1]) / len(row[:-1]) if len(row) > 1 else None for row in res.retention]
    generality = [u["metrics"].get("generated/generality") for u in res.per_update]
    return {"held": held, "retention": retention, "generality": generality,
            "train_seconds": [u["train"]["seconds"] for u in res.per_update]}


def plot_stream(results: BenchResults, path: Path) -> None:
    """Retention, generality and training seconds per update against the number of edits held."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.8))
    axes = fig.subplots(1, 3)
    for name, res in results.methods.items():
        s = stream_series(res, results.update_sizes)
        for ax, key in zip(axes, ("retention", "generality", "train_seconds")):
            points = [(x, y) for x, y in zip(s["held"], s[key]) if y is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, [100 * y for y in ys] if key != "train_seconds" else ys, marker="o", markersize=3,
                        label=name)
    for ax, label in zip(axes, ("retention of earlier updates (%, generated)", "generality (%, generated)",
                                "training seconds of the update")):
        ax.set_xlabel("edits held after the update")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[:2]:
        ax.set_ylim(-5, 105)
    axes[0].legend()
    save_figure(fig, path)


def plot_margins(results: BenchResults, path: Path) -> None:
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    series = {"base (before)": results.base["margins"]}
    series.update({f"{n} (after)": r.margins for n, r in results.methods.items()})
    series = {k: [m for m in v if m is not None] for k, v in series.items()}
    everything = [m for v in series.values() for m in v]
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    if everything:
        bins = np.linspace(min(everything), max(everything) + 1e-9, 30)
        for i, (label, values) in enumerate(series.items()):
            ax.hist(values, bins=bins, histtype="step", linewidth=1.8, label=label,
                    color="grey" if i == 0 else None, linestyle="--" if i == 0 else "-")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("margin log p(y⁺|x) − log p(y⁻|x) (teacher-forced, nats)")
    ax.set_ylabel("edits")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Edit margins before and after editing")
    ax.legend()
    save_figure(fig, path)


def write_all(results: BenchResults | dict, out: str | os.PathLike) -> dict[str, str]:
    """results.csv, the plots and report.md under `out`; returns their names by role."""
    results = BenchResults.of(results)
    out = Path(out)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows_csv(results))
    atomic_write_text(out / "results.csv", buf.getvalue())
    plots = {}
    for name, res in results.methods.items():
        plot_retention(name, res.retention, out / f"retention-{name}.png")
        plots[f"retention matrix of {name}"] = f"retention-{name}.png"
    plot_forgetting(results, out / "forgetting.png")
    plots["forgetting curves"] = "forgetting.png"
    plot_margins(results, out / "margins.png")
    plots["margins before and after"] = "margins.png"
    plot_stream(results, out / "stream.png")
    plots["retention, generality and training time along the stream"] = "stream.png"
    atomic_write_text(out / "report.md", markdown(results, plots))
    return {"results": "results.json", "csv": "results.csv", "report": "report.md", "plots": list(plots.values())}
