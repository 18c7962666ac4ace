"""The multi-update comparison on API updates (CodeUpdateArena), resumable like the fact bench.

    corsa bench --data ../shared/data/codeupdatearena/arena.jsonl --methods lora,corsa --edits 6 --updates 2 --out DIR

``--edits N`` counts *API updates* here: N are chosen with the seed, and split in order into K
updates of N/K. Of each API update's tasks about half are trained (the edits) and the others held
out (:func:`corsa.code.arena.split_tasks`); ``DIR/tasks.json`` records the choice.

An edit (method.md §1) is x = the task's prompt (:func:`corsa.code.programs.task_prompt`: the
problem and the solution's signature, never the update's documentation), y⁺ = the reference
solution in a ```python block, y⁻ = the program the unedited model writes (greedy, adapter off),
so DPO pushes the model's old habit down. They are written to ``DIR/edits.jsonl``.

Before training, and after each update k, the tasks of API updates 1..k are measured by running
sampled programs in the sandbox (:mod:`corsa.code.evaluate`): Pass@1/5 and UPass@1/5, held-out
and trained tasks apart, and per API-update group, so what an update k does to the groups before
it (retention) is seen. Everything goes to ``DIR/base.json``, ``DIR/<method>/update-<k>/``
(adapter and eval.json, whole or not at all), ``results.json``, ``report.md`` and a plot.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

from .. import distributed as dist
from .. import old_answers, sandbox
from ..errors import ConfigError, refuse_given
from ..files import atomic_write_json, atomic_write_text
from ..methods import METHODS, get_method
from ..records import Edit
from ..report import save_figure
from ..sandbox import run_programs
from ..text import fmt_metric, show_table
from ..updates import split_in_order
from .arena import CodeTask, edit_id, split_tasks
from .arena_file import load_arena
from .evaluate import TIMEOUT_S, drawing, evaluate_code, summarise
from .programs import fence, program_for, task_prompt

# the flags of `corsa bench` that measure facts and mean nothing for programs: refused by name
# (spec field, flag, the value that means "not given", why)
NOT_FOR_CODE = (("skip_invalid", "--skip-invalid", False, "a CodeUpdateArena file has no edit records to skip"),
                ("mmlu", "--mmlu", 0, "the code bench measures programs (Pass@k), not MMLU"),
                ("mmlu_file", "--mmlu-file", None, "the code bench measures programs (Pass@k), not MMLU"),
                ("mmlu_seed", "--mmlu-seed", 0, "the code bench measures programs (Pass@k), not MMLU"),
                ("earlier_sample", "--earlier-sample", 0, "the code bench measures a few API updates, each whole"))


class Code:
    """API updates (CodeUpdateArena), measured by running programs (see :class:`corsa.comparison.harness.Bench`)."""

    def __init__(self, spec):
        self.spec = spec
        drawn = drawing(spec.eval, tokens_given="max_new_tokens" in spec.train)
        self.samples, self.temperature, self.new_tokens = drawn["samples"], drawn["temperature"], drawn["max_new_tokens"]

    def refuse(self, spec) -> None:
        """The flags this domain cannot honour, each by name (every other one works as for facts)."""
        refuse_given(spec, NOT_FOR_CODE, "a CodeUpdateArena file")
        if "scope" in spec.train or any("scope" in s for s in spec.sets.values()):
            raise ConfigError("--scope does not apply to a CodeUpdateArena file: its programs are written with the "
                              "adapter on for every prompt (no subject gates it)")
        if spec.eval.seed:
            raise ConfigError("--sample-seed does not apply to a CodeUpdateArena file: its programs are sampled "
                              "with --seed (and the update's number)")
        for m in spec.methods:
            if get_method(m).solver:
                raise ConfigError(f"--methods {m}: the model editors change facts about a subject; on API "
                                  f"updates only the trained methods run ({', '.join(n for n, r in METHODS.items() if not r.solver)})")
        if dist.world_size() > 1:
            raise ConfigError("a CodeUpdateArena bench runs in one process (its programs run in this machine's "
                              "sandbox); start it without torchrun or accelerate launch")

    def _eval(self, model, fmt, tasks, adapter: bool, seed: int) -> dict:
        return evaluate_code(model, fmt, tasks, self.split, samples=self.samples, temperature=self.temperature,
                             max_new_tokens=self.new_tokens, batch_size=self.spec.eval.batch_size, seed=seed,
                             timeout_s=TIMEOUT_S, adapter=adapter, progress=self.spec.progress)

    def before_model(self, bench) -> None:
        """The API updates chosen (their reference solutions run here) and split in order into the updates."""
        spec, data = self.spec, Path(self.spec.data)
        self.out, self.log = bench.out, bench.log
        groups = load_arena(data)
        n, k = spec.n_edits, spec.n_updates
        if n > len(groups):
            raise ConfigError(f"--edits {n}: {data} holds {len(groups)} API updates (--edits counts API updates "
                              f"for CodeUpdateArena)")
        sandbox.check()  # one clear message where programs cannot run, before anything is chosen
        tasks_file = self.out / "tasks.json"
        if tasks_file.exists():  # a resumed run measures the tasks it chose, whatever timing said since
            import json

            chosen = self.chosen_before(groups, json.loads(tasks_file.read_text()))
        else:
            chosen = self.choose(groups, n, spec.seed)
        self.chosen = chosen
        self.groups = split_in_order(chosen, k)  # [update][api update][task]
        self.split = split_tasks(chosen, spec.seed)

    def settings(self, fmt) -> dict:
        spec = self.spec
        return {"api_updates": spec.n_edits, "n_updates": spec.n_updates, "seed": spec.seed, "template": fmt.name,
                "samples": self.samples, "temperature": self.temperature, "max_new_tokens": self.new_tokens,
                "domain": "code", "tasks": [t.id for g in self.chosen for t in g]}  # a resume measures the same tasks

    def prepare(self, bench, model, fmt):
        spec = self.spec
        atomic_write_json(self.out / "tasks.json", {
            "updates": [[g[0].update.id for g in groups_k] for groups_k in self.groups], **self.split,
            "dropped": self.dropped})
        trained = set(self.split["train"])

        def write_programs():
            tasks = [t for g in self.chosen for t in g if t.id in trained]
            self.log(f"bench · the unedited model writes y⁻ for {len(tasks)} trained tasks")
            edits = [Edit(id=edit_id(t), prompt=task_prompt(t), target_new=fence(t.reference),
                          subject=t.update.function_path, source=str(spec.data)) for t in tasks]
            return old_answers.fill(model, fmt, edits, batch_size=spec.eval.batch_size)

        by_id = {e.id: e for e in bench.kept_edits(write_programs)}
        updates = [[by_id[edit_id(t)] for g in groups_k for t in g if t.id in trained] for groups_k in self.groups]

        def measure():
            self.log("bench · the unedited model on every task")
            return self._eval(model, fmt, self.tasks(spec.n_updates), adapter=False, seed=spec.seed)

        self.base = bench.kept_json("base.json", measure)
        return updates, self.base

    def choose(self, groups: list[list[CodeTask]], n: int, seed: int) -> list[list[CodeTask]]:
        """``n`` API updates in a seeded order, each with at least two tasks whose reference passes here.

        A few of the benchmark's reference solutions fail their own tests in this environment: they
        need more than the sandbox's memory, a package it lacks (scipy), or an API that NumPy 2
        removed (``np.NaN``). A model cannot be scored on a task its reference fails, so such tasks
        are left out and said so (``tasks.json``: ``dropped``, with the reason); an API update left
        with fewer than two tasks (one to train, one to hold out) is passed over for the next.
        """
        order = list(groups)
        random.Random(seed).shuffle(order)
        chosen, self.dropped = [], {}
        while len(chosen) < n and order:
            batch, order = order[:n - len(chosen)], order[n - len(chosen):]
            tasks = [t for g in batch for t in g]
            self.log(f"bench · running the reference solutions of {len(tasks)} tasks")
            outcomes = run_programs([program_for(t, t.reference) for t in tasks], timeout_s=TIMEOUT_S)
            failed = {t.id: f"{o.status}: {o.detail}" for t, o in zip(tasks, outcomes) if not o.passed}
            self.dropped |= failed
            chosen += [kept for g in batch if len(kept := [t for t in g if t.id not in failed]) >= 2]
        if len(chosen) < n:
            raise ConfigError(f"--edits {n}: only {len(chosen)} API updates have two tasks whose reference "
                              f"solution passes here")
        if self.dropped:
            self.log(f"bench · {len(self.dropped)} tasks left out: their reference fails here (tasks.json)")
        return chosen

    def chosen_before(self, groups: list[list[CodeTask]], record: dict) -> list[list[CodeTask]]:
        """The API updates and tasks a first run chose (its tasks.json), in its order."""
        by_update = {g[0].update.id: g for g in groups}
        self.dropped = record.get("dropped", {})
        keep = set(record["train"]) | set(record["held_out"])
        try:
            return [[t for t in by_update[u] if t.id in keep] for ids in record["updates"] for u in ids]
        except KeyError as e:
            raise ConfigError(f"{self.out / 'tasks.json'} names the API update {e.args[0]}, which "
                              f"{self.spec.data} does not hold: choose another --out") from None

    def tasks(self, k: int) -> list[CodeTask]:
        """The tasks of API updates in bench updates 1..k."""
        return [t for groups_k in self.groups[:k] for g in groups_k for t in g]

    def per_update(self, records: list[dict], k: int) -> list[dict]:
        """The metrics of update j's tasks (j ≤ k), held-out and trained apart."""
        out = []
        for j, groups_j in enumerate(self.groups[:k]):
            ids = {t.id for g in groups_j for t in g}
            split = {"held_out": [], "trained": []}
            for r in records:
                if r["id"] in ids:
                    split[r["split"]].append(r)
            out.append({"update": j + 1, "metrics": {**summarise(split["held_out"], "code/held_out"),
                                                     **summarise(split["trained"], "code/trained")}})
        return out

    def measured(self, k: int) -> str:
        return f"{len(self.tasks(k))} tasks"

    def evaluate(self, bench, editor, method: str, k: int, record) -> dict:
        """The tasks of API updates 1..k, programs sampled and run (eval.json of update k)."""
        ev = self._eval(editor.model, editor.fmt, self.tasks(k), adapter=True, seed=self.spec.seed + k)
        return {"method": method, "update": k, "edit_ids": [e.id for e in record.edits],
                "train": {"seconds": record.result.seconds, "steps": record.result.steps,
                          "epochs": record.result.epochs},
                **ev, "per_update": self.per_update(ev["records"], k)}

    def line(self, result: dict) -> str:
        m = result["metrics"]
        pct = lambda key: fmt_metric(m.get(key), key)  # noqa: E731
        return (f"held-out pass@1 {pct('code/held_out/pass@1')}, pass@5 {pct('code/held_out/pass@5')}; "
                f"trained pass@1 {pct('code/trained/pass@1')}")

    def results(self, bench, per_method: dict[str, list[dict]], started: float) -> dict:
        K = self.spec.n_updates
        results = {
            "domain": "code", "settings": bench.settings, "split": self.split,
            "base": {"metrics": self.base["metrics"], "per_update": self.per_update(self.base["records"], K)},
            "protocol": self.base["protocol"], "n_updates": K, "api_updates": self.spec.n_edits,
            "methods": {m: {"config": self.spec.method_config(m).resolved(),
                            "updates": [{"update": e["update"], "metrics": e["metrics"],
                                         "per_update": e["per_update"], "train": e["train"],
                                         "seconds": e["seconds"]} for e in evals]}
                        for m, evals in per_method.items()},
            "seconds": round(time.time() - started, 1),
        }
        plot = bench.out / "code-pass.png"
        plot_pass(results, plot)
        results["files"] = {"report": "report.md", "plots": [plot.name]}
        atomic_write_text(bench.out / "report.md", markdown(results))
        return results

    def summary(self, results: dict) -> None:
        """What `corsa bench` prints: the table and where the files are."""
        out = self.spec.out
        header, rows = table(results)
        print(show_table(rows, header, numbers=True))
        print(f"{results['api_updates']} API updates in {results['n_updates']} updates; pass@k in %, "
              f"{results['protocol']['samples']} programs per task run in the sandbox")
        print(f"report: {out / 'report.md'}")
        print(f"results: {out / 'results.json'}")
        print("plots: " + ", ".join(str(out / p) for p in results["files"]["plots"]), file=sys.stdout)


COLUMNS = (("held-out pass@1", "code/held_out/pass@1"), ("held-out pass@5", "code/held_out/pass@5"),
           ("held-out upass@5", "code/held_out/upass@5"), ("trained pass@1", "code/trained/pass@1"),
           ("trained pass@5", "code/trained/pass@5"))


def table(results: dict) -> tuple[list[str], list[list[str]]]:
    """One row per method and update (and the unedited model), the Pass@k columns in %."""
    header = ["method", "after update"] + [name for name, _ in COLUMNS]
    rows = [["unedited", "–"] + [fmt_metric(results["base"]["metrics"].get(key), key) for _, key in COLUMNS]]
    for method, entry in results["methods"].items():
        for u in entry["updates"]:
            rows.append([method, str(u["update"])] + [fmt_metric(u["metrics"].get(key), key) for _, key in COLUMNS])
    return header, rows


def markdown(results: dict) -> str:
    header, rows = table(results)
    p = results["protocol"]
    lines = [f"# corsa bench on API updates ({results['settings']['data']})", "",
             f"{results['api_updates']} API updates in {results['n_updates']} updates; "
             f"{len(results['split']['train'])} tasks trained, {len(results['split']['held_out'])} held out. "
             f"{p['samples']} programs per task sampled at temperature {p['temperature']} (up to {p['max_new_tokens']} "
             f"tokens), each run against the task's unit tests in the sandbox ({p['timeout_s']} s limit). "
             "Pass@k: unbiased estimator (Chen et al. 2021); UPass: passes with the update and fails without it. "
             "Held-out tasks were never trained on: they measure whether the update was learnt.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    K = results["n_updates"]
    lines += ["", "## By API-update group, after each update (pass@5: trained tasks / held-out tasks)", "",
              "What an update does to the groups trained before it: the trained column is retention.", ""]
    head = ["method", "after update"] + [f"group {j}" for j in range(1, K + 1)]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(g: dict) -> str:
        m = g["metrics"]
        return " / ".join(fmt_metric(m.get(key), key) for key in ("code/trained/pass@5", "code/held_out/pass@5"))

    lines.append("| unedited | – | " + " | ".join(cell(g) for g in results["base"]["per_update"]) + " |")
    for method, entry in results["methods"].items():
        for u in entry["updates"]:
            cells = [cell(g) for g in u["per_update"]]
            lines.append(f"| {method} | {u['update']} | " + " | ".join(cells + ["–"] * (K - len(cells))) + " |")
    lines += ["", f"![pass@k]({results['files']['plots'][0]})", ""]
    return "\n".join(lines)


def plot_pass(results: dict, path: Path) -> None:
    """Held-out and trained pass@5 after each update, one line per method, the unedited model dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, (title, key) in zip(axes, (("held-out tasks", "code/held_out/pass@5"),
                                       ("trained tasks", "code/trained/pass@5"))):
        base = results["base"]["metrics"].get(key)
        if base is not None:
            ax.axhline(100 * base, color="grey", linestyle="--", label="unedited")
        for method, entry in results["methods"].items():
            xs = [u["update"] for u in entry["updates"]]
            ys = [100 * (u["metrics"].get(key) or 0.0) for u in entry["updates"]]
            ax.plot(xs, ys, marker="o", label=method)
        ax.set_title(f"pass@5, {title}")
        ax.set_xlabel("after update")
        ax.set_xticks(range(1, results["n_updates"] + 1))
    axes[0].set_ylabel("%")
    axes[0].legend(fontsize=8)
    save_figure(fig, path)
