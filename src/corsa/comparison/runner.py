"""Running the multi-update comparison (method.md §6): the same edits, K updates, every method.

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

import gc
import json
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import distributed as dist
from .. import old_answers
from ..errors import ConfigError
from ..evaluate import counts, evaluate, summarise
from ..io import (atomic_dir_on_main, atomic_write_json, check_not_inside, check_ours, check_writable, output_lock,
                  peak_rss_mb, sha256_file)
from ..methods import METHODS
from ..resume import check_same, finished_evals
from .results import BenchResults, assemble
from .spec import BenchSpec, select, split


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
        from ..loaders import load_edits, save_edits_jsonl
        from ..models import load_model, model_fingerprint
        from ..prompts import PromptFormat

        spec = self.spec
        data = Path(spec.data)
        if not data.exists():
            raise ConfigError(f"--data {data} does not exist")
        from ..io import check_input_file
        from ..loaders import MAX_FILE_BYTES

        check_input_file(data, MAX_FILE_BYTES, "--data")  # /dev/zero would be hashed forever
        dist.on_main(check_writable, self.out)
        check_not_inside({"--data": data}, self.out)
        dist.on_main(check_ours, self.out, "bench", tuple(METHODS))
        mmlu_info, self.mmlu = None, None
        if spec.mmlu:  # before the model loads: a wrong file is found in a second, not a minute
            from .. import mmlu

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
        return finished_evals(self.out / method, self.spec.n_updates)

    def run_method(self, method: str) -> list[dict]:
        from ..api import Editor, seed_everything

        spec, K = self.spec, self.spec.n_updates
        cfg, folder = spec.method_folder(method)
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
        editor = Editor(spec.model, adapter=adapter, config=cfg, device=spec.device, progress=spec.progress,
                        report_to=spec.report_to, logging_dir=self.out / "tensorboard" / method)
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
        from .. import report

        started = time.time()
        self.prepare()
        self.bar = tqdm(total=len(self.spec.methods) * self.spec.n_updates, desc="bench", unit="update",
                        disable=not dist.show_bar(self.spec.progress))
        try:
            per_method = {m: self.run_method(m) for m in self.spec.methods}
        finally:
            self.bar.close()
        results = self.results(per_method)

        def write() -> dict:  # the main worker's results, written by it and returned to every worker
            results.finished_at = time.time()
            results.seconds = time.time() - started
            results.files = report.write_all(results, self.out)
            content = results.to_dict()
            atomic_write_json(self.out / "results.json", content)
            return content

        return dist.on_main(write)

    def results(self, per_method: dict[str, list[dict]]) -> BenchResults:
        configs = {m: self.spec.method_config(m).resolved() for m in per_method}
        return assemble(self.settings, self.updates, self.protocol, self.base, per_method, configs)


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"



def run_bench(spec: BenchSpec) -> dict:
    """Run (or resume) the comparison and write every output; returns the results."""
    return Bench(spec).run()
