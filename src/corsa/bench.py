"""The multi-update comparison (method.md §6): the same edits, K updates, every method.

    corsa bench --model smollm2-135m --data edits.jsonl --methods lora,corsa --edits 60 --updates 3 --out DIR

1. N edits are chosen with the seed (the edits of an MQuAKE case — those sharing their
   multi-hop questions — are kept together) and split, in that order, into K updates of N/K.
   Missing old answers y⁻ are the unedited model's greedy answers. All methods get the same
   edits, written to ``DIR/edits.jsonl``.
2. The unedited model is evaluated on all N edits (``DIR/base.json``); its answers to the
   locality probes are the cache every later locality number compares against.
3. For each method, one adapter is trained update after update; after update k every edit seen
   so far is evaluated in one pass, which gives R[k][j] (reliability on update j) for all j ≤ k.
   Adapter, run record and evaluation go to ``DIR/<method>/update-<k>/``, which appears whole or
   not at all, so rerunning the same command skips finished (method, update) pairs and
   continues from the last saved adapter. Before each update the generators are seeded from
   the seed and k, so a resumed run trains exactly as an uninterrupted one.
4. ``results.json``, ``results.csv``, ``report.md`` and the plots are written from all of it
   (:mod:`corsa.report`).

Settings that change the numbers (model weights, data file content, N, K, seed, evaluation and
MMLU settings, each method's training configuration) are saved and compared on a rerun: a
difference is an error, not a silent mix. Methods may be added to or left out of a rerun.
The seed is also every method's training seed (``EditConfig.seed``).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import random
import sys
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import distributed as dist
from . import metrics as M
from . import old_answers
from .config import EditConfig
from .errors import ConfigError
from .evaluate import HEADLINE, EvalSettings, counts, evaluate, headline, summarise
from .io import (peak_rss_mb, atomic_dir_on_main, atomic_write_json, check_not_inside, check_ours, check_writable, library_versions,
                 output_lock, sha256_file)
from .methods import METHODS, get_method
from .records import Edit
from .resume import check_same

# options every method must share: the evaluation reads them, or they belong to the bench
SHARED_OPTIONS = {"method": "--methods", "seed": "--seed", "template": "--template",
                  "max_new_tokens": "--max-new-tokens"}
TIMING_KEYS = ("train_seconds", "eval_seconds", "peak_rss_mb", "peak_gpu_mb", "seconds", "finished_at")


@dataclass
class BenchSpec:
    """One `corsa bench` command. `train` applies to every method (the method terms rho, beta and
    combine only where the method has them); `sets` holds per-method overrides."""

    model: str
    data: str
    out: Path
    methods: tuple[str, ...] = ("lora", "sam", "dpo", "corsa")
    n_edits: int = 60
    n_updates: int = 3
    seed: int = 0
    train: dict = field(default_factory=dict)
    sets: dict = field(default_factory=dict)
    eval: EvalSettings = field(default_factory=EvalSettings)
    mmlu: int = 0
    mmlu_file: str | None = None
    mmlu_seed: int = 0
    skip_invalid: bool = False
    device: str | None = None
    progress: bool = True

    def __post_init__(self):
        self.out = Path(self.out)
        self.methods = tuple(self.methods)
        if not self.methods:
            raise ConfigError("--methods is empty; name at least one of " + ", ".join(METHODS))
        for m in self.methods:
            get_method(m)
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"--methods names a method twice: {','.join(self.methods)}")
        if self.n_updates < 1:
            raise ConfigError(f"--updates must be at least 1, not {self.n_updates}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"--seed must be a whole number from 0 to 2³² − 1, not {self.seed}")
        if self.n_edits < self.n_updates:
            raise ConfigError(f"--edits {self.n_edits} cannot be split into {self.n_updates} updates")
        if self.n_edits % self.n_updates:
            lo = self.n_edits - self.n_edits % self.n_updates
            raise ConfigError(f"--edits {self.n_edits} does not split into {self.n_updates} updates of equal size "
                              f"(method.md §6); use --edits {lo} or {lo + self.n_updates}")
        if self.mmlu < 0:
            raise ConfigError(f"--mmlu must be 0 (off) or a number of questions, not {self.mmlu}")
        for key in self.train:
            if key in ("method", "seed"):
                raise ConfigError(f"'{key}' is set by the bench itself ({SHARED_OPTIONS[key]})")
        for method, overrides in self.sets.items():
            if method not in self.methods:
                raise ConfigError(f"--set names '{method}', which is not among --methods {','.join(self.methods)}")
            for key in overrides:
                if key in SHARED_OPTIONS:
                    raise ConfigError(f"--set {method}.{key}: '{key}' must be the same for every method; "
                                      f"use {SHARED_OPTIONS[key]}")
        for m in self.methods:
            self.method_config(m)  # fail now, not after hours of other methods

    @property
    def template(self) -> str:
        return self.train.get("template", "auto")

    def method_config(self, method: str) -> EditConfig:
        row = get_method(method)
        # a plain flag sets an option for every method that takes it (the method row says which)
        d = {k: v for k, v in self.train.items() if row.uses(k)} | {"method": method, "seed": self.seed}
        d.update(self.sets.get(method, {}))
        return EditConfig.from_dict(d)


def parse_sets(items: list[str] | None) -> dict[str, dict]:
    """``["corsa.rho=0.1", "sam.lr=1e-4"]`` → ``{"corsa": {"rho": 0.1}, "sam": {"lr": 1e-4}}``."""
    hints = typing.get_type_hints(EditConfig)
    out: dict[str, dict] = {}
    for item in items or []:
        head, sep, value = item.partition("=")
        method, dot, key = head.strip().partition(".")
        key = key.replace("-", "_")
        if not sep or not dot or not method or not key:
            raise ConfigError(f"--set {item!r}: write METHOD.OPTION=VALUE, e.g. corsa.rho=0.1 "
                              f"(an option for every method is a plain flag, e.g. --lr 1e-4)")
        get_method(method)
        if key not in hints:
            raise ConfigError(f"--set {item!r}: unknown option '{key}'; options: "
                              + ", ".join(f.name for f in dataclasses.fields(EditConfig)))
        out.setdefault(method, {})[key] = _convert(value.strip(), hints[key], item)
    return out


def _convert(value: str, hint, item: str):
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    kind = next(t for t in typing.get_args(hint) if t is not type(None)) if optional else hint
    if optional and value.lower() in ("none", "null"):
        return None
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        if typing.get_origin(kind) is tuple:
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return kind(value)
    except ValueError:
        raise ConfigError(f"--set {item!r}: {value!r} is not a valid {getattr(kind, '__name__', kind)}") from None


# ---------------------------------------------------------------------------------------------
# choosing and splitting the edits


def select(edits: list[Edit], n: int, seed: int) -> list[Edit]:
    """`n` edits chosen with `seed`; edits sharing multi-hop questions (an MQuAKE case) stay together."""
    groups: dict = {}
    for i, e in enumerate(edits):
        groups.setdefault(e.portability if e.portability else i, []).append(e)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    chosen, total = [], 0
    for group in order:
        if total + len(group) <= n:
            chosen += group
            total += len(group)
        if total == n:
            return chosen
    if len(edits) < n:
        raise ConfigError(f"--edits {n}: the data holds only {len(edits)} edits")
    raise ConfigError(f"--edits {n}: no whole set of cases adds up to {n} edits (the edits of a multi-hop "
                      f"case are kept together); try a multiple of the case size")


def split(edits: list[Edit], k: int) -> list[list[Edit]]:
    size = len(edits) // k
    return [edits[i * size:(i + 1) * size] for i in range(k)]


# ---------------------------------------------------------------------------------------------
# the run


class Bench:
    """Runs a :class:`BenchSpec`; `run()` returns the results dict also written to results.json."""

    def __init__(self, spec: BenchSpec):
        self.spec = spec
        self.out = spec.out
        self.bar = None

    def log(self, message: str) -> None:
        if self.spec.progress and dist.is_main():
            tqdm.write(message, file=sys.stderr)

    # --- preparation -------------------------------------------------------------------------
    def prepare(self):
        """Settings check, the chosen edits, the MMLU subset and the unedited model's evaluation."""
        from .loaders import load_edits, save_edits_jsonl
        from .models import load_model, model_fingerprint
        from .prompts import PromptFormat

        spec = self.spec
        data = Path(spec.data)
        if not data.exists():
            raise ConfigError(f"--data {data} does not exist")
        dist.on_main(check_writable, self.out)
        check_not_inside({"--data": data}, self.out)
        dist.on_main(check_ours, self.out, "bench", tuple(METHODS))
        mmlu_info, self.mmlu = None, None
        if spec.mmlu:  # before the model loads: a wrong file is found in a second, not a minute
            from . import mmlu

            path = mmlu.resolve_path(spec.mmlu_file)
            self.mmlu = mmlu.subset(mmlu.load(path), spec.mmlu, spec.mmlu_seed)
            mmlu_info = {"file": str(path), "sha256": sha256_file(path), "n": spec.mmlu, "seed": spec.mmlu_seed}
        self.log(f"bench · loading {spec.model}")
        model, tokenizer = load_model(spec.model, device=dist.device(spec.device))
        fmt = PromptFormat(tokenizer, spec.template)
        self.settings = {
            "model": spec.model, "model_fingerprint": model_fingerprint(model),
            "data": str(data), "data_sha256": sha256_file(data), "skip_invalid": spec.skip_invalid,
            "n_edits": spec.n_edits, "n_updates": spec.n_updates, "seed": spec.seed,
            "template": fmt.name, "eval": spec.eval.identity(), "mmlu": mmlu_info,
        }
        compared = {k: v for k, v in self.settings.items() if k not in ("model", "data")}
        check_same(self.out / "bench.json", compared, "settings", "or choose another --out")

        # under a launcher every worker takes the same branch (the main one decides) and reads
        # only files that an earlier run completed
        edits_file = self.out / "edits.jsonl"
        if dist.on_main(edits_file.exists):
            edits = load_edits(edits_file, format="plain")
        else:
            edits = select(load_edits(data, on_invalid="skip" if spec.skip_invalid else "error"),
                           spec.n_edits, spec.seed)
            # a missing y⁻ is the unedited model's own short answer (method.md §4, corsa.old_answers)
            edits = old_answers.fill(model, fmt, edits, spec.eval.max_new_tokens, spec.eval.batch_size)
            dist.on_main(save_edits_jsonl, edits, edits_file)
        self.edits = edits
        self.updates = split(edits, spec.n_updates)

        base_file = self.out / "base.json"
        if dist.on_main(base_file.exists):
            self.base = json.loads(base_file.read_text())
        else:
            self.log(f"bench · evaluating the unedited model on {len(edits)} edits")
            ev = evaluate(model, edits, fmt=fmt, base=True, mmlu=self.mmlu, settings=spec.eval,
                          progress=spec.progress)
            self.base = {"metrics": ev["metrics"], "counts": ev["counts"], "protocol": ev["protocol"],
                         "mmlu": ev["mmlu"], "seconds": ev["seconds"], "base_answers": ev["base_answers"],
                         "records": ev["records"]}
            dist.on_main(atomic_write_json, base_file, self.base)
        self.protocol = self.base["protocol"]
        del model
        gc.collect()

    # --- one method --------------------------------------------------------------------------
    def finished(self, method: str) -> list[dict]:
        """Evaluations of the finished updates 1..k of `method` (a gap ends the list).

        Read by the main worker and sent to the others, so that all resume from the same update.
        """
        return dist.on_main(self._finished, method)

    def _finished(self, method: str) -> list[dict]:
        from .models import damaged_weights

        evals = []
        for k in range(1, self.spec.n_updates + 1):
            path = self.out / method / f"update-{k}" / "eval.json"
            try:
                evals.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                break
        # the run goes on from the last finished update's adapter: one that cannot be read is trained again
        while evals and damaged_weights(self.out / method / f"update-{len(evals)}" / "adapter"):
            evals.pop()
        return evals

    def run_method(self, method: str) -> list[dict]:
        from .api import Editor, seed_everything

        spec, K = self.spec, self.spec.n_updates
        cfg = spec.method_config(method)
        folder = self.out / method
        check_same(folder / "config.json", cfg.resolved(), f"training options for {method}",
                    f"or delete {folder} to train {method} again")
        evals = self.finished(method)
        for k in range(1, len(evals) + 1):
            self.log(f"{method} · update {k}/{K} · already done, skipped")
            self.bar.update(1)
        if len(evals) == K:
            return evals
        done = len(evals)
        adapter = folder / f"update-{done}" if done else None
        # a resumed method continues the adapter's lineage (Editor reads it from the run record),
        # so the next update gets its own index and seeds and the record lists every update
        editor = Editor(spec.model, adapter=adapter, config=cfg, device=spec.device, progress=spec.progress)
        cache = self.base["base_answers"]
        for k in range(done + 1, K + 1):
            edits = self.updates[k - 1]
            seen = [e for u in self.updates[:k] for e in u]
            seed_everything(cfg.seed + 1000 * k)
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            # only the main worker creates, fills (Editor.update and on_main) and renames the folder
            with atomic_dir_on_main(folder / f"update-{k}") as tmp:
                self.log(f"{method} · update {k}/{K} · training on {len(edits)} edits")
                record = editor.update(edits, out=tmp)
                self.log(f"{method} · update {k}/{K} · evaluating {len(seen)} edits "
                         f"({record.result.seconds:.1f} s training, {record.result.steps} steps)")
                ev = evaluate(editor, seen, base_answers=cache, mmlu=self.mmlu if k == K else None,
                              settings=spec.eval, progress=spec.progress)
                pool = [e.target_new for e in seen]  # crossover counts every edited answer seen so far
                sizes = [len(u) for u in self.updates[:k]]
                bounds = [sum(sizes[:j]) for j in range(k + 1)]
                per_update = [{"update": j + 1, "metrics": summarise(ev["records"][bounds[j]:bounds[j + 1]], pool),
                               "counts": counts(ev["records"][bounds[j]:bounds[j + 1]])} for j in range(k)]
                result = {
                    "method": method, "update": k, "edit_ids": [e.id for e in edits],
                    "train": {"seconds": record.result.seconds, "steps": record.result.steps,
                              "epochs": record.result.epochs, "stopped_early": record.result.stopped_early},
                    "eval_seconds": ev["seconds"], "peak_rss_mb": peak_rss_mb(),
                    "peak_gpu_mb": (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                                    if torch.cuda.is_available() else None),
                    "protocol": ev["protocol"], "metrics": ev["metrics"], "counts": ev["counts"],
                    "per_update": per_update, "mmlu": ev["mmlu"], "scope": ev["scope"], "records": ev["records"],
                }
                dist.on_main(atomic_write_json, tmp / "eval.json", result)
            evals.append(result)
            m = ev["metrics"]
            self.log(f"{method} · update {k}/{K} · reliability {_pct(m['generated/reliability'])} on all "
                     f"{len(seen)} edits, on update 1 {_pct(per_update[0]['metrics']['generated/reliability'])}, "
                     f"locality {_pct(m['generated/locality'])}")
            self.bar.update(1)
        del editor
        gc.collect()
        return evals

    # --- everything --------------------------------------------------------------------------
    def run(self) -> dict:
        with output_lock(self.out):  # a second bench on the same folder is refused while this one runs
            return self._run()

    def _run(self) -> dict:
        from . import report

        started = time.time()
        self.prepare()
        self.bar = tqdm(total=len(self.spec.methods) * self.spec.n_updates, desc="bench", unit="update",
                        disable=not (self.spec.progress and dist.is_main()))
        try:
            per_method = {m: self.run_method(m) for m in self.spec.methods}
        finally:
            self.bar.close()
        results = self.results(per_method)

        def write() -> dict:  # the main worker's results, written by it and returned to every worker
            results["finished_at"] = time.time()
            results["seconds"] = time.time() - started
            results["files"] = report.write_all(results, self.out)
            atomic_write_json(self.out / "results.json", results)
            return results

        return dist.on_main(write)

    def results(self, per_method: dict[str, list[dict]]) -> dict:
        spec = self.spec
        out = {
            "corsa_bench": 1, **self.settings, "methods_run": list(spec.methods),
            "update_sizes": [len(u) for u in self.updates],
            "update_edit_ids": [[e.id for e in u] for u in self.updates],
            "protocol": self.protocol,
            "final_keys": {short: HEADLINE[short] for short in headline(self.base["metrics"])},
            "notes": {
                "retention": "R[k][j]: generated reliability on the edits of update j+1 after update k+1 "
                             "(rows are updates trained, 0-based lists)",
                "retention_teacher_forced": "the same with teacher-forced efficacy (margin > 0); "
                                            "teacher_forced holds its update efficacy, retention and forgetting",
                "forgetting": "mean over j<K of R[j][j] − R[K][j]; retention_final: mean over j<K of R[K][j]; "
                              "both None with one update",
                "relative_forgetting_reduction": "1 − forgetting / forgetting of lora; None without lora or "
                                                 "when lora forgot nothing",
                "peak_rss_mb": "ru_maxrss of the whole bench process when the method finished: it includes the "
                               "methods run before it in the same process and never decreases",
                "train_seconds": "wall time of training, summed over updates (evaluation excluded)",
                "lost_edits": "after the last update, the earlier updates' edits by greedy answer: kept (y⁺), never "
                              "took (not y⁺ right after their own update), or lost to y⁻, to another edit's y⁺, "
                              "or elsewhere (corsa.metrics.lost_edits)",
                "answers": "per edit: its greedy answer after each update, from the update that brought it "
                           "(after[0]) to the last",
            },
            "base": {"final": headline(self.base["metrics"]), "metrics": self.base["metrics"],
                     "counts": self.base["counts"], "mmlu": self.base["mmlu"],
                     "margins": [r["margin"] for r in self.base["records"]],
                     "answers": {r["id"]: r["answer"] for r in self.base["records"]}},
            "methods": {},
            "versions": library_versions(),
        }
        for method, evals in per_method.items():
            R = [[ev["per_update"][j]["metrics"]["generated/reliability"] for j in range(k + 1)]
                 for k, ev in enumerate(evals)]
            R_tf = [[ev["per_update"][j]["metrics"]["teacher_forced/efficacy"] for j in range(k + 1)]
                    for k, ev in enumerate(evals)]
            R_tf = R_tf if all(v is not None for row in R_tf for v in row) else None
            last = evals[-1]
            out["methods"][method] = {
                "config": self.spec.method_config(method).resolved(),
                "retention": R,
                "retention_teacher_forced": R_tf,
                **M.retention_summary(R),
                "relative_forgetting_reduction": None,
                # the same summary of the teacher-forced matrix: does y⁺ stay ranked above y⁻?
                "teacher_forced": None if R_tf is None else {
                    **M.retention_summary(R_tf), "relative_forgetting_reduction": None},
                "final": headline(last["metrics"]),
                "metrics": last["metrics"],
                "counts": last["counts"],
                "mmlu": last["mmlu"],
                "per_update": [{"update": ev["update"], "metrics": ev["metrics"], "train": ev["train"],
                                "eval_seconds": ev["eval_seconds"]} for ev in evals],
                "train_seconds": round(sum(ev["train"]["seconds"] for ev in evals), 3),
                "eval_seconds": round(sum(ev["eval_seconds"] for ev in evals), 3),
                "steps": sum(ev["train"]["steps"] for ev in evals),
                "peak_rss_mb": max(ev["peak_rss_mb"] for ev in evals),
                "peak_gpu_mb": max((ev["peak_gpu_mb"] for ev in evals if ev.get("peak_gpu_mb") is not None),
                                   default=None),
                "margins": [r["margin"] for r in last["records"]],
                "lost_edits": _lost_edits(evals, [len(u) for u in self.updates]),
                "answers": _answers(evals),
            }
        lora = out["methods"].get("lora")
        if lora is not None:
            for res in out["methods"].values():
                res["relative_forgetting_reduction"] = M.relative_forgetting_reduction(res["forgetting"],
                                                                                       lora["forgetting"])
                if res["teacher_forced"] and lora["teacher_forced"]:
                    res["teacher_forced"]["relative_forgetting_reduction"] = M.relative_forgetting_reduction(
                        res["teacher_forced"]["forgetting"], lora["teacher_forced"]["forgetting"])
        return out


def _lost_edits(evals: list[dict], sizes: list[int]) -> dict | None:
    """After the last update, where the earlier updates' edits went (metrics.lost_edits); greedy only.

    The records are in update order, so the earlier updates' edits are the first ones; an edit
    counts as lost only if it took (answered y⁺) right after its own update.
    """
    last = evals[-1]["records"]
    n_earlier = sum(sizes[:len(evals) - 1])
    old = last[:n_earlier]
    if not old or not all(isinstance(r["answer"], str) for r in old):
        return None
    took = []
    for j in range(len(evals) - 1):  # update j's edits, in the evaluation right after update j
        start = sum(sizes[:j])
        took += [M.contains(r["answer"], r["target_new"]) for r in evals[j]["records"][start:start + sizes[j]]]
    return M.lost_edits([r["answer"] for r in old], [r["target_new"] for r in old], [r["target_old"] for r in old],
                        [r["target_new"] for r in last], took)


def _answers(evals: list[dict]) -> list[dict]:
    """Every edit's greedy answer after each update from its own on (what does it answer now?)."""
    rows: dict[str, dict] = {}
    for k, ev in enumerate(evals):
        for r in ev["records"]:
            row = rows.setdefault(r["id"], {"id": r["id"], "prompt": r["prompt"], "target_new": r["target_new"],
                                            "target_old": r["target_old"], "from_update": k + 1, "after": []})
            row["after"].append(r["answer"])
    return list(rows.values())


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def run_bench(spec: BenchSpec) -> dict:
    """Run (or resume) the comparison and write every output; returns the results."""
    return Bench(spec).run()
