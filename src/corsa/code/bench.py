"""The multi-update comparison on API updates (CodeUpdateArena), resumable like the fact bench.

    corsa bench --data ../shared/data/codeupdatearena/arena.jsonl --methods lora,corsa --edits 6 --updates 2 --out DIR

``--edits N`` counts *API updates* here: N are chosen with the seed, and split in order into K
updates of N/K. Of each API update's tasks about half are trained (the edits) and the others held
out (:func:`corsa.code.arena.split_tasks`); ``DIR/tasks.json`` records the choice.

An edit (method.md §1) is x = the task's prompt (:func:`corsa.code.evaluate.task_prompt`: the
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

import gc
import json
import random
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from .. import old_answers, sandbox
from ..errors import ConfigError
from ..io import (atomic_dir, atomic_write_json, atomic_write_text, check_not_inside, check_ours, check_writable,
                  output_lock, sha256_file)
from ..methods import METHODS, get_method
from ..records import Edit
from ..resume import check_same, finished_evals
from .arena import CodeTask, edit_id, load_arena, split_tasks
from .evaluate import evaluate_code, summarise, task_prompt
from ..sandbox import run_programs
from .programs import fence, program_for

# how programs are drawn when the command does not say (--sample, --temperature, --max-new-tokens)
SAMPLES, TEMPERATURE, NEW_TOKENS = 5, 0.8, 320
TIMEOUT_S = 10.0  # per program, wall clock


class CodeBench:
    """Runs a :class:`corsa.comparison.spec.BenchSpec` whose data is a CodeUpdateArena file."""

    def __init__(self, spec):
        self.spec = spec
        self.out = Path(spec.out)
        ev = spec.eval
        self.samples = ev.sample or SAMPLES
        self.temperature = ev.temperature if ev.sample else TEMPERATURE
        self.new_tokens = ev.max_new_tokens if spec.train.get("max_new_tokens") else NEW_TOKENS
        for m in spec.methods:
            if get_method(m).solver:
                raise ConfigError(f"--methods {m}: the model editors change facts about a subject; on API "
                                  f"updates only the trained methods run ({', '.join(n for n, r in METHODS.items() if not r.solver)})")

    def log(self, message: str) -> None:
        if self.spec.progress:
            tqdm.write(message, file=sys.stderr)

    def _eval(self, model, fmt, tasks, adapter: bool, seed: int) -> dict:
        return evaluate_code(model, fmt, tasks, self.split, samples=self.samples, temperature=self.temperature,
                             max_new_tokens=self.new_tokens, batch_size=self.spec.eval.batch_size, seed=seed,
                             timeout_s=TIMEOUT_S, adapter=adapter, progress=self.spec.progress)

    def prepare(self) -> None:
        from ..loaders import load_edits, save_edits_jsonl
        from ..models import load_model, model_fingerprint
        from ..prompts import PromptFormat

        spec, data = self.spec, Path(self.spec.data)
        check_writable(self.out)
        check_not_inside({"--data": data}, self.out)
        check_ours(self.out, "bench", tuple(METHODS))
        groups = load_arena(data)
        n, k = spec.n_edits, spec.n_updates
        if n > len(groups):
            raise ConfigError(f"--edits {n}: {data} holds {len(groups)} API updates (--edits counts API updates "
                              f"for CodeUpdateArena)")
        if k < 1 or n % k:
            raise ConfigError(f"--edits {n} must split into --updates {k} equal parts")
        sandbox.check()  # one clear message where programs cannot run, before anything is chosen
        tasks_file = self.out / "tasks.json"
        if tasks_file.exists():  # a resumed run measures the tasks it chose, whatever timing said since
            chosen = self.chosen_before(groups, json.loads(tasks_file.read_text()))
        else:
            chosen = self.choose(groups, n, spec.seed)
        self.groups = [chosen[i * (n // k):(i + 1) * (n // k)] for i in range(k)]  # [update][api update][task]
        self.split = split_tasks(chosen, spec.seed)
        self.log(f"bench · loading {spec.model}")
        self.model, tokenizer = load_model(spec.model, device=spec.device)
        self.fmt = PromptFormat(tokenizer, spec.template)
        self.settings = {"model": spec.model, "model_fingerprint": model_fingerprint(self.model), "data": str(data),
                         "data_sha256": sha256_file(data), "api_updates": n, "n_updates": k, "seed": spec.seed,
                         "template": self.fmt.name, "samples": self.samples, "temperature": self.temperature,
                         "max_new_tokens": self.new_tokens, "domain": "code",
                         "tasks": [t.id for g in chosen for t in g]}  # a resume must measure the same tasks
        check_same(self.out / "bench.json", {k: v for k, v in self.settings.items() if k not in ("model", "data")},
                   "settings", "or choose another --out")
        atomic_write_json(self.out / "tasks.json", {
            "updates": [[g[0].update.id for g in groups_k] for groups_k in self.groups], **self.split,
            "dropped": self.dropped})
        trained = set(self.split["train"])
        edits_file = self.out / "edits.jsonl"
        if edits_file.exists():
            edits = load_edits(edits_file, format="plain")
        else:
            tasks = [t for g in chosen for t in g if t.id in trained]
            self.log(f"bench · the unedited model writes y⁻ for {len(tasks)} trained tasks")
            edits = [Edit(id=edit_id(t), prompt=task_prompt(t), target_new=fence(t.reference),
                          subject=t.update.function_path, source=str(data)) for t in tasks]
            edits = old_answers.fill(self.model, self.fmt, edits, batch_size=spec.eval.batch_size)
            save_edits_jsonl(edits, edits_file)
        by_id = {e.id: e for e in edits}
        self.edits = [[by_id[edit_id(t)] for g in groups_k for t in g if t.id in trained]
                      for groups_k in self.groups]
        base_file = self.out / "base.json"
        if base_file.exists():
            self.base = json.loads(base_file.read_text())
        else:
            self.log("bench · the unedited model on every task")
            self.base = self._eval(self.model, self.fmt, self.tasks(k), adapter=False, seed=spec.seed)
            atomic_write_json(base_file, self.base)

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

    def run_method(self, method: str) -> list[dict]:
        from ..api import Editor, seed_everything

        spec, K = self.spec, self.spec.n_updates
        cfg, folder = spec.method_folder(method)
        evals = finished_evals(folder, K)
        if len(evals) == K:
            return evals
        done = len(evals)
        editor = Editor(spec.model, adapter=folder / f"update-{done}" if done else None, config=cfg,
                        device=spec.device, progress=spec.progress)
        for k in range(done + 1, K + 1):
            seed_everything(cfg.seed + 1000 * k)
            with atomic_dir(folder / f"update-{k}") as tmp:
                self.log(f"{method} · update {k}/{K} · training on {len(self.edits[k - 1])} programs")
                record = editor.update(self.edits[k - 1], out=tmp)
                ev = self._eval(editor.model, editor.fmt, self.tasks(k), adapter=True, seed=spec.seed + k)
                result = {"method": method, "update": k, "edit_ids": [e.id for e in self.edits[k - 1]],
                          "train": {"seconds": record.result.seconds, "steps": record.result.steps,
                                    "epochs": record.result.epochs},
                          **ev, "per_update": self.per_update(ev["records"], k)}
                atomic_write_json(tmp / "eval.json", result)
            evals.append(result)
            m = ev["metrics"]
            self.log(f"{method} · update {k}/{K} · held-out pass@1 {_pct(m['code/held_out/pass@1'])}, "
                     f"pass@5 {_pct(m.get('code/held_out/pass@5'))}; trained pass@1 {_pct(m['code/trained/pass@1'])}")
        del editor
        gc.collect()
        return evals

    def run(self) -> dict:
        with output_lock(self.out):
            started = time.time()
            self.prepare()
            per_method = {m: self.run_method(m) for m in self.spec.methods}
            K = self.spec.n_updates
            base_per_update = self.per_update(self.base["records"], K)
            results = {
                "domain": "code", "settings": self.settings, "split": self.split,
                "base": {"metrics": self.base["metrics"], "per_update": base_per_update},
                "protocol": self.base["protocol"], "n_updates": K, "api_updates": self.spec.n_edits,
                "methods": {m: {"config": self.spec.method_config(m).resolved(),
                                "updates": [{"update": e["update"], "metrics": e["metrics"],
                                             "per_update": e["per_update"], "train": e["train"],
                                             "seconds": e["seconds"]} for e in evals]}
                            for m, evals in per_method.items()},
                "seconds": round(time.time() - started, 1),
            }
            plot = self.out / "code-pass.png"
            plot_pass(results, plot)
            results["files"] = {"report": "report.md", "plots": [plot.name]}
            atomic_write_text(self.out / "report.md", markdown(results))
            atomic_write_json(self.out / "results.json", results)
            return results


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


COLUMNS = (("held-out pass@1", "code/held_out/pass@1"), ("held-out pass@5", "code/held_out/pass@5"),
           ("held-out upass@5", "code/held_out/upass@5"), ("trained pass@1", "code/trained/pass@1"),
           ("trained pass@5", "code/trained/pass@5"))


def table(results: dict) -> tuple[list[str], list[list[str]]]:
    """One row per method and update (and the unedited model), the Pass@k columns in %."""
    header = ["method", "after update"] + [name for name, _ in COLUMNS]
    rows = [["unedited", "–"] + [_pct(results["base"]["metrics"].get(key)) for _, key in COLUMNS]]
    for method, entry in results["methods"].items():
        for u in entry["updates"]:
            rows.append([method, str(u["update"])] + [_pct(u["metrics"].get(key)) for _, key in COLUMNS])
    return header, rows


def text_table(results: dict) -> str:
    header, rows = table(results)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header, *rows])


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
        return f"{_pct(m.get('code/trained/pass@5'))} / {_pct(m.get('code/held_out/pass@5'))}"

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

    from ..report import _save

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
    _save(fig, path)


def run_code_bench(spec) -> dict:
    return CodeBench(spec).run()
