"""Running the multi-update comparison (method.md §6): the same edits, K updates, every method.

    corsa bench --model smollm2-135m --data edits.jsonl --methods lora,corsa --edits 60 --updates 3 --out DIR

One protocol for every domain (facts: :mod:`corsa.comparison.facts`; API updates:
:mod:`corsa.code.bench`):

1. The settings are checked, the edits chosen with the seed and split in order into K updates,
   written to ``DIR/edits.jsonl`` (the domain chooses them and fills missing old answers y⁻ with
   the unedited model's).
2. The unedited model is measured (``DIR/base.json``).
3. For each method, one adapter is trained update after update; after update k the domain
   measures everything seen so far. Adapter, run record and evaluation go to
   ``DIR/<method>/update-<k>/``, which appears whole or not at all, so rerunning the same
   command skips finished (method, update) pairs and continues from the last saved adapter.
   Before each update the generators are seeded from the seed and k, so a resumed run trains
   exactly as an uninterrupted one. With ``--report-to tensorboard`` each method's steps go to
   ``DIR/tensorboard/<method>``.
4. ``results.json`` and the domain's report are written from all of it.

Settings that change the numbers (model weights, data file content, N, K, seed, the domain's
evaluation settings, each method's training configuration) are saved and compared on a rerun:
a difference is an error, not a silent mix. Methods may be added to or left out of a rerun.
The seed is also every method's training seed (``EditConfig.seed``). Under a launcher every
worker runs the protocol and only the main one writes.
"""

from __future__ import annotations

import contextlib
import gc
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm

from .. import distributed as dist
from ..api import Editor, seed_everything
from ..code.arena_file import is_arena
from ..code.bench import Code
from ..errors import ConfigError
from ..files import atomic_write_json, check_input_file, json_object, sha256_file
from ..locks import output_lock
from ..ownership import check_not_inside, check_ours, is_corsa_name, manifest
from ..publish import atomic_dir_on_main, check_writable
from ..loaders import MAX_FILE_BYTES, load_edits, save_edits_jsonl
from ..methods import METHODS
from ..models import load_model, model_fingerprint
from ..prompts import PromptFormat
from ..resume import finished_evals, refuse_changes
from ..updates import train_in_order
from .facts import Facts
from .spec import BenchSpec


class Domain(Protocol):
    """What a domain supplies to the harness (facts: corsa.comparison.facts.Facts; API updates:
    corsa.code.bench.Code); everything else is the harness's."""

    def refuse(self, spec: BenchSpec) -> None:
        """Raise a ConfigError naming any flag of the spec this domain cannot honour."""

    def before_model(self, bench: "Bench") -> None:
        """Checks and choices that need no model (a wrong file is found in a second)."""

    def settings(self, fmt: PromptFormat) -> dict:
        """The settings a rerun must share, beside the model's and the data file's."""

    def prepare(self, bench: "Bench", model, fmt: PromptFormat) -> tuple[list[list], dict]:
        """The K updates' edits (bench.kept_edits) and the unedited model's measure (bench.kept_json)."""

    def measured(self, k: int) -> str:
        """What is measured after update k, in words ("40 edits")."""

    def evaluate(self, bench: "Bench", editor: Editor, method: str, k: int, record) -> dict:
        """Update k's eval.json: everything seen so far measured with the edited model."""

    def line(self, result: dict) -> str:
        """The progress line of one update's evaluation."""

    def results(self, bench: "Bench", per_method: dict[str, list[dict]], started: float) -> dict:
        """results.json's content, the domain's report written beside it."""

    def summary(self, results: dict) -> None:
        """What `corsa bench` prints at the end."""


class Bench:
    """Runs a :class:`BenchSpec` in a :class:`Domain`; `run()` returns the results dict also written to
    results.json."""

    def __init__(self, spec: BenchSpec, domain: Domain | None = None):
        self.spec = spec
        self.out = spec.out
        self.domain = domain or domain_of(spec)
        self.domain.refuse(spec)
        self.bar = None

    def log(self, message: str) -> None:
        if self.spec.progress and dist.is_main():
            tqdm.write(message, file=sys.stderr)

    # --- preparation -------------------------------------------------------------------------
    def prepare(self) -> None:
        """Settings check, the chosen edits split into updates, and the unedited model's measure."""
        spec = self.spec
        data = Path(spec.data)
        if not data.exists():
            raise ConfigError(f"--data {data} does not exist")
        check_input_file(data, MAX_FILE_BYTES, "--data")  # /dev/zero would be hashed forever
        dist.on_main(check_writable, self.out)
        check_not_inside({"--data": data}, self.out)
        dist.on_main(check_ours, self.out, "bench", tuple(METHODS))
        self.domain.before_model(self)  # a wrong file is found in a second, not after the model loads
        self.log(f"bench · loading {spec.model}")
        model, tokenizer = load_model(spec.model, device=dist.device(spec.device))
        fmt = PromptFormat(tokenizer, spec.template)
        self.settings = {"model": spec.model, "model_fingerprint": model_fingerprint(model),
                         "data": str(data), "data_sha256": sha256_file(data), **self.domain.settings(fmt)}
        compared = {k: v for k, v in self.settings.items() if k not in ("model", "data")}
        dist.on_main(self._settings_here, compared)
        with self.recording():  # edits.jsonl, base.json, tasks.json
            self.updates, self.base = self.domain.prepare(self, model, fmt)
        del model
        gc.collect()

    # --- bench.json: the settings, the run's identity, and the files the bench wrote ------------
    # bench.json lists every file the bench writes at the top of its folder with its size and
    # sha256 (ownership.manifest), as an adapter's marker does: a file changed since (a report.md
    # edited by hand) is not corsa's, and the folder is refused before anything is written.
    # "writing" is true while the bench writes them: a run killed then left files not yet listed.
    def _settings_here(self, compared: dict) -> None:
        path = self.out / "bench.json"
        if not path.exists():
            atomic_write_json(path, {**compared, "run_id": uuid.uuid4().hex, "files": {}, "writing": False})
            return
        saved = json.loads(path.read_text())
        refuse_changes({k: v for k, v in saved.items() if k not in BENCH_LEDGER}, compared, self.out, "settings",
                       "or choose another --out")
        if "run_id" not in saved:  # an earlier version's folder (check_ours found its names consistent): adopt it
            atomic_write_json(path, {**saved, "run_id": uuid.uuid4().hex, "files": self._written(), "writing": False})

    def _written(self) -> dict:
        return manifest(self.out, [x.name for x in self.out.iterdir() if x.name != "bench.json" and x.is_file()
                                   and not x.is_symlink() and is_corsa_name("bench", x.name)])

    def _ledger(self, writing: bool) -> None:
        path = self.out / "bench.json"
        saved = json_object(path)
        if saved is None:
            return
        atomic_write_json(path, {**saved, "files": saved.get("files", {}) if writing else self._written(),
                                 "writing": writing})

    @contextlib.contextmanager
    def recording(self):
        """Around the bench's writes at the top of its folder: bench.json then lists what they left."""
        dist.on_main(self._ledger, True)
        yield
        dist.on_main(self._ledger, False)

    # under a launcher every worker takes the same branch (the main one decides) and reads only
    # files that an earlier run completed
    def kept_edits(self, make) -> list:
        """DIR/edits.jsonl as a first run wrote it, else make() written there."""
        path = self.out / "edits.jsonl"
        if dist.on_main(path.exists):
            return load_edits(path, format="plain")
        edits = make()
        dist.on_main(save_edits_jsonl, edits, path)
        return edits

    def kept_json(self, name: str, make) -> dict:
        """DIR/name as a first run wrote it, else make() written there."""
        path = self.out / name
        if dist.on_main(path.exists):
            return json.loads(path.read_text())
        value = make()
        dist.on_main(atomic_write_json, path, value)
        return value

    # --- one method --------------------------------------------------------------------------
    def run_method(self, method: str) -> list[dict]:
        spec, K = self.spec, self.spec.n_updates
        cfg, folder = spec.method_folder(method)
        # read by the main worker and sent to the others, so that all resume from the same update
        evals = dist.on_main(finished_evals, folder, K)
        for k in range(1, len(evals) + 1):
            self.log(f"{method} · update {k}/{K} · already done, skipped")
            self.bar.update(1)
        if len(evals) == K:
            return evals
        done = len(evals)
        # a resumed method continues the adapter's lineage (Editor reads it from the run record),
        # so the next update gets its own index and seeds and the record lists every update
        editor = Editor(spec.model, adapter=folder / f"update-{done}" if done else None, config=cfg,
                        device=spec.device, progress=spec.progress, report_to=spec.report_to,
                        logging_dir=self.out / "tensorboard" / method)

        def before(k: int, edits: list) -> list:
            seed_everything(cfg.seed + 1000 * k)
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            self.log(f"{method} · update {k}/{K} · training on {len(edits)} edits")
            return edits

        def after(k: int, record, tmp: Path) -> None:
            self.log(f"{method} · update {k}/{K} · evaluating {self.domain.measured(k)} "
                     f"({record.result.seconds:.1f} s training, {record.result.steps} steps)")
            result = self.domain.evaluate(self, editor, method, k, record)
            dist.on_main(atomic_write_json, tmp / "eval.json", result)
            evals.append(result)
            self.log(f"{method} · update {k}/{K} · {self.domain.line(result)}")
            self.bar.update(1)

        # only the main worker creates, fills (Editor.update and on_main) and renames each folder
        train_in_order(editor, self.updates, done, lambda k: atomic_dir_on_main(folder / f"update-{k}"), before, after)
        del editor
        gc.collect()
        return evals

    # --- everything --------------------------------------------------------------------------
    def run(self) -> dict:
        # a folder of the user's is refused before the lock is taken (taking it cleans up a killed run's
        # leftovers), and again under it (prepare)
        dist.on_main(check_ours, self.out, "bench", tuple(METHODS))
        with output_lock(self.out, "bench", tuple(METHODS)):  # a second bench on the same folder is refused while this one runs
            return self._run()

    def _run(self) -> dict:
        started = time.time()
        self.prepare()
        self.bar = tqdm(total=len(self.spec.methods) * self.spec.n_updates, desc="bench", unit="update",
                        disable=not dist.show_bar(self.spec.progress))
        try:
            per_method = {m: self.run_method(m) for m in self.spec.methods}
        finally:
            self.bar.close()

        def write() -> dict:  # the main worker's results, written by it and returned to every worker
            content = self.domain.results(self, per_method, started)
            atomic_write_json(self.out / "results.json", content)
            return content

        with self.recording():
            return dist.on_main(write)


BENCH_LEDGER = ("run_id", "files", "writing")  # what bench.json holds besides the settings a rerun must keep


def domain_of(spec: BenchSpec) -> Domain:
    """The domain of the spec's data: API updates for a CodeUpdateArena file, else facts."""
    return Code(spec) if is_arena(spec.data) else Facts(spec)


def run_bench(spec: BenchSpec) -> dict:
    """Run (or resume) the comparison and write every output; returns the results."""
    return Bench(spec).run()
