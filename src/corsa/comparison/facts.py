"""The facts domain of `corsa bench` (CounterFact, zsRE, MQuAKE, any edit file): generated and
teacher-forced metrics (method.md §5), typed results (:mod:`.results`) and :mod:`corsa.report`.

1. N edits are chosen with the seed (the edits of an MQuAKE case — those sharing their
   multi-hop questions — are kept together) and split, in that order, into K updates of N/K.
   Missing old answers y⁻ are the unedited model's greedy answers.
2. The unedited model is evaluated on all N edits (``DIR/base.json``); its answers to the
   locality probes are the cache every later locality number compares against.
3. After update k every edit seen so far is evaluated in one pass, which gives R[k][j]
   (reliability on update j) for all j ≤ k; MMLU, when asked for, after the last update. With
   ``--earlier-sample n`` the earlier updates' edits are measured, after each update but the last,
   on a sample of n drawn with the seed and k, the same share from each earlier update
   (:meth:`Facts.measured_edits`): update k's own
   edits are all measured, and after the last update every edit, so a long stream's bench costs
   what its edits cost, not their square. R[k][j] then stands on update j's edits in the sample
   (``per_update[j].counts`` says how many) and ``sample`` in eval.json says what was drawn.
4. ``results.json``, ``results.csv``, ``report.md`` and the plots are written from all of it.
"""

from __future__ import annotations

import random
import sys
import time

import torch

from .. import mmlu, old_answers, report
from ..evaluate import counts, evaluate, summarise
from ..files import sha256_file
from ..machine import peak_rss_mb
from ..loaders import load_edits
from ..text import fmt_metric
from ..updates import split_in_order
from .results import BenchResults, assemble
from .spec import select


class Facts:
    """Edits of facts, measured by corsa.evaluate (see :class:`corsa.comparison.harness.Bench`)."""

    def __init__(self, spec):
        self.spec = spec
        self.mmlu, self.mmlu_info = None, None

    def refuse(self, spec) -> None:
        """Every flag of `corsa bench` works for facts."""

    def before_model(self, bench) -> None:
        spec = self.spec
        if spec.mmlu:
            path = mmlu.resolve_path(spec.mmlu_file)
            self.mmlu = mmlu.subset(mmlu.load(path), spec.mmlu, spec.mmlu_seed)
            self.mmlu_info = {"file": str(path), "sha256": sha256_file(path), "n": spec.mmlu, "seed": spec.mmlu_seed}

    def settings(self, fmt) -> dict:
        spec = self.spec
        settings = {"skip_invalid": spec.skip_invalid, "n_edits": spec.n_edits, "n_updates": spec.n_updates,
                    "seed": spec.seed, "template": fmt.name, "eval": spec.eval.identity(), "mmlu": self.mmlu_info}
        if spec.earlier_sample:  # a bench without it keeps the settings an earlier version saved
            settings["earlier_sample"] = spec.earlier_sample
        return settings

    def prepare(self, bench, model, fmt):
        spec = self.spec

        def choose():
            edits = select(load_edits(spec.data, on_invalid="skip" if spec.skip_invalid else "error"),
                           spec.n_edits, spec.seed)
            # a missing y⁻ is the unedited model's own short answer (method.md §4, corsa.old_answers)
            return old_answers.fill(model, fmt, edits, spec.eval.max_new_tokens, spec.eval.batch_size)

        edits = bench.kept_edits(choose)
        self.updates = split_in_order(edits, spec.n_updates)

        def measure():
            bench.log(f"bench · evaluating the unedited model on {len(edits)} edits")
            ev = evaluate(model, edits, fmt=fmt, base=True, mmlu=self.mmlu, settings=spec.eval, progress=spec.progress)
            return {"metrics": ev["metrics"], "counts": ev["counts"], "protocol": ev["protocol"], "mmlu": ev["mmlu"],
                    "seconds": ev["seconds"], "base_answers": ev["base_answers"], "records": ev["records"]}

        self.base = bench.kept_json("base.json", measure)
        return self.updates, self.base

    def measured(self, k: int) -> str:
        per_update, _ = self.measured_edits(k)
        total, seen = sum(map(len, per_update)), sum(len(u) for u in self.updates[:k])
        return f"all {seen} edits" if total == seen else f"{total} of {seen} edits (the earlier ones sampled)"

    def measured_edits(self, k: int) -> tuple[list[list], dict | None]:
        """The edits measured after update k, per update j ≤ k, and what was sampled (None: nothing).

        Every edit seen so far, unless --earlier-sample n is smaller than the earlier updates' edits
        and k is not the last update: then all of update k's edits and a sample of the earlier ones,
        stratified so that R[k][j] stands on every earlier update: n split evenly over the k − 1
        earlier updates (the remainder to updates drawn with the seed and k), at least one each,
        each update's share drawn with the same generator and kept in its order.
        """
        n, updates = self.spec.earlier_sample, self.updates[:k]
        earlier = updates[:-1]
        total = sum(map(len, earlier))
        if not n or k == self.spec.n_updates or total <= n:
            return [list(u) for u in updates], None
        rng = random.Random(self.spec.seed * 1_000_003 + k)
        share = [n // len(earlier)] * len(earlier)
        for j in rng.sample(range(len(earlier)), n % len(earlier)):
            share[j] += 1
        per_update = []
        for u, m in zip(earlier, share):
            keep = set(rng.sample(range(len(u)), min(max(m, 1), len(u))))
            per_update.append([e for i, e in enumerate(u) if i in keep])
        return per_update + [list(updates[-1])], {"earlier": total, "sampled": sum(map(len, per_update)),
                                                  "seed": self.spec.seed, "update": k}

    def evaluate(self, bench, editor, method: str, k: int, record) -> dict:
        """The edits seen so far (or update k's and a sample of the earlier ones), with R[k][j] per
        update j ≤ k (eval.json of update k)."""
        spec, updates = self.spec, self.updates
        per_update_edits, sample = self.measured_edits(k)
        seen = [e for u in per_update_edits for e in u]
        mmlu_questions = self.mmlu if k == spec.n_updates else None  # after the last update only
        ev = evaluate(editor, seen, base_answers=self.base["base_answers"], mmlu=mmlu_questions, settings=spec.eval,
                      progress=spec.progress)
        pool = [e.target_new for u in updates[:k] for e in u]  # crossover counts every edited answer seen so far
        if sample is not None:  # the sample's crossover and hijack against every edit seen, as without one
            ev["metrics"] = summarise(ev["records"], pool)
        sizes = [len(u) for u in per_update_edits]
        bounds = [sum(sizes[:j]) for j in range(k + 1)]
        per_update = [{"update": j + 1, "metrics": summarise(ev["records"][bounds[j]:bounds[j + 1]], pool),
                       "counts": counts(ev["records"][bounds[j]:bounds[j + 1]])} for j in range(k)]
        return {
            "method": method, "update": k, "edit_ids": [e.id for e in updates[k - 1]], "sample": sample,
            "train": {"seconds": record.result.seconds, "steps": record.result.steps,
                      "epochs": record.result.epochs, "stopped_early": record.result.stopped_early},
            "eval_seconds": ev["seconds"], "peak_rss_mb": peak_rss_mb(),
            "peak_gpu_mb": (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                            if torch.cuda.is_available() else None),
            "protocol": ev["protocol"], "metrics": ev["metrics"], "counts": ev["counts"],
            "per_update": per_update, "mmlu": ev["mmlu"], "scope": ev["scope"], "records": ev["records"],
        }

    def line(self, result: dict) -> str:
        m, first, key = result["metrics"], result["per_update"][0]["metrics"], "generated/reliability"
        return (f"reliability {fmt_metric(m[key], key)} on {self.measured(result['update'])}, on update 1 "
                f"{fmt_metric(first[key], key)}, locality {fmt_metric(m['generated/locality'], 'generated/locality')}")

    def results(self, bench, per_method: dict[str, list[dict]], started: float) -> dict:
        configs = {m: self.spec.method_config(m).resolved() for m in per_method}
        results: BenchResults = assemble(bench.settings, self.updates, self.base["protocol"], self.base, per_method,
                                         configs)
        results.finished_at = time.time()
        results.seconds = time.time() - started
        results.files = report.write_all(results, bench.out)
        return results.to_dict()

    def summary(self, results: dict) -> None:
        """What `corsa bench` prints: the table and where the files are."""
        out = self.spec.out
        print(report.text_table(results))
        print(f"{results['n_edits']} edits in {results['n_updates']} updates; reliability, generality, locality: "
              f"generated ({results['protocol']['generated']['decoding']}); efficacy, margin: teacher-forced; "
              f"figures in %, margin in nats", file=sys.stdout)
        print(f"report: {out / 'report.md'}")
        print(f"results: {out / 'results.json'}, {out / 'results.csv'}")
        print("plots: " + ", ".join(str(out / p) for p in results["files"]["plots"]))
