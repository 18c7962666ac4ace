"""The Python API: an Editor holds a model and its one adapter across updates.

    import corsa
    editor = corsa.Editor("smollm2-135m", method="corsa")
    editor.update("my_edits.jsonl", out="runs/first")
    editor.ask(["The Eiffel Tower is located in the city of"])

`corsa.edit(...)` is the one-call form of the same.
"""

from __future__ import annotations

import functools
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import adapter as adapters
from . import distributed as dist
from .config import ASK_NEW_TOKENS, DEFAULT_MODEL, EditConfig
from .engine import BaseScores, UpdateResult, train_update
from .errors import ConfigError, DataError, TrainingError
from .generate import generate
from . import negatives
from .io import (PARTIAL_LOG, check_ours, check_writable, jsonl_text, library_versions, output_lock, publish,
                 stage_dir, stage_text, writing)
from .prompts import PromptFormat, encode_edits
from .metrics import normalise
from .records import Edit
from .scope import routed
from . import tracking


def _same_family(adapter, config: EditConfig, saved=None) -> None:
    """Refuse to continue a trained adapter with ROME, MEMIT or AlphaEdit, or one of theirs with training:
    the two kinds carry different layers (all projections against a few MLP outputs).

    Checked when an update is about to train, never when an adapter is only read (ask, eval,
    export read every method's adapter whatever the Editor's method is).
    """
    from .methods import METHODS

    row = METHODS.get(saved) if isinstance(saved, str) else None
    if row is not None and (row.solver is None) != (config.spec.solver is None):
        kind = lambda r: "a closed-form edit of MLP layers" if r.solver else "a trained LoRA adapter"  # noqa: E731
        raise ConfigError(f"{adapter} holds {kind(row)} ({saved}); {config.method} makes {kind(config.spec)}, so it "
                          f"cannot continue it. Continue it with {saved}, or start a new adapter")


def _say(message: str) -> None:
    """A one-line message beside any progress bar, on stderr."""
    import sys

    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


def _held_key(edit: Edit) -> tuple:
    """What the hold test of an edit depends on besides the adapter: its prompt and both answers."""
    return edit.prompt, edit.target_new, edit.target_old


def seed_everything(seed: int) -> None:
    """Seed every generator the run touches (called inside the run, never at import)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def as_edits(edits, limit: int | None = None, on_invalid: str = "error") -> list[Edit]:
    """Edits from a file path, Edit objects or plain dicts.

    Edit objects get the checks of a file's records too (text fields, visible text, probes, one
    id and one answer per prompt); only y⁻ = y⁺ is let through, since a y⁻ the model filled may
    equal y⁺ (corsa.old_answers).
    """
    if isinstance(edits, (str, os.PathLike)):
        from .loaders import load_edits

        return load_edits(edits, limit=limit, on_invalid=on_invalid)
    if isinstance(edits, (dict, Edit)):
        raise DataError(f"edits must be a list of edits, a file path or Edit objects; one {type(edits).__name__} "
                        f"was given: wrap it in a list ([edit])", path="<edits given in Python>")
    if isinstance(edits, (bytes, bytearray)) or not hasattr(edits, "__iter__"):
        raise DataError(f"edits must be a list of edits, a file path or Edit objects, not {type(edits).__name__}",
                        path="<edits given in Python>")
    edits = list(edits)
    if edits and all(isinstance(e, Edit) for e in edits):
        from .loaders import check_edit_objects

        return check_edit_objects(edits[:limit] if limit is not None else edits)
    from .loaders import edits_from_records

    # dicts are checked as a file's records are, and Edit objects mixed in with them alike
    records = [e.to_dict() if isinstance(e, Edit) else e for e in edits]
    return edits_from_records(records, limit, on_invalid=on_invalid)


def _looks_like_path(model) -> bool:
    return isinstance(model, os.PathLike) or str(model).startswith((".", "/", "~")) or os.sep in str(model) and \
        Path(str(model)).expanduser().exists()


def _check_input_files(config: EditConfig) -> None:
    """The files an update will read (--anchors, --stats-corpus): regular files of bounded size."""
    from .editors.stats import MAX_CORPUS_BYTES
    from .io import check_input_file
    from .preserve import MAX_ANCHOR_BYTES

    if config.anchors is not None:
        check_input_file(config.anchors, MAX_ANCHOR_BYTES, "--anchors", ConfigError)
    if getattr(config, "stats_corpus", None) is not None:
        check_input_file(config.stats_corpus, MAX_CORPUS_BYTES, "--stats-corpus", ConfigError)


def _check_model_argument(model) -> None:
    """Editor's `model`: a name or folder, or a loaded (model, tokenizer) pair; anything else a clear error."""
    if isinstance(model, os.PathLike) or (isinstance(model, str) and model.strip()):
        return
    if isinstance(model, tuple):
        if len(model) == 2 and isinstance(model[0], torch.nn.Module) and hasattr(model[1], "encode"):
            return
        raise ConfigError(f"model as a tuple must be a loaded (model, tokenizer) pair, not a tuple of "
                          f"{', '.join(type(m).__name__ for m in model) or 'nothing'}")
    shown = "empty text" if isinstance(model, str) else type(model).__name__
    raise ConfigError(f"model must be an alias (smollm2-135m), a local folder, a hub id or a loaded (model, "
                      f"tokenizer) pair, not {shown}")


@dataclass
class UpdateRecord:
    index: int
    edits: list[Edit]
    result: UpdateResult
    out: Path | None = None
    replayed: list[str] = field(default_factory=list)  # ids of earlier edits trained again
    edit_ids: list[str] | None = None  # as the run record lists them (default: the ids of `edits`)

    def __post_init__(self):
        if self.edit_ids is None:
            self.edit_ids = [e.id for e in self.edits]


def lineage(adapter, history: list[Edit]) -> list[UpdateRecord]:
    """The updates a saved adapter has been through, read from the run record beside it.

    A continued adapter keeps its lineage: the next update gets the next index (and its seeds),
    and the new run record lists the earlier updates before the new one. An adapter saved
    without a run record (or a damaged one) starts a new lineage.
    """
    folder = adapters.find_adapter_dir(adapter).parent
    by_id = {e.id: e for e in history}
    try:
        out = []
        for u in adapters.run_record(adapter).get("updates", []):
            result = UpdateResult(u["steps"], u["epochs"], u["train_seconds"], u["stopped_early"], [u["final"]])
            out.append(UpdateRecord(u["index"] - 1, [by_id[i] for i in u["edit_ids"] if i in by_id], result,
                                    folder, u.get("replayed_ids", []), list(u["edit_ids"])))
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []  # an older or damaged record: a new lineage starts here


class Editor:
    """A base model, its prompt format and the one LoRA adapter that every update trains.

    model: an alias (smollm2-135m), a local folder, a hub id, or an already loaded
    (model, tokenizer) pair. adapter: a run or adapter folder to continue from.

    Under `torchrun` or `accelerate launch` every worker builds its own Editor with the same
    arguments (each on its own GPU) and calls the same methods in the same order: training
    and `ask` are split across the workers, and only the main one writes files.
    """

    def __init__(self, model=DEFAULT_MODEL, adapter: str | os.PathLike | None = None,
                 config: EditConfig | None = None, device: str | None = None, progress: bool = True,
                 trust_remote_code: bool = False, report_to: str = "none",
                 logging_dir: str | os.PathLike | None = None, **overrides):
        import uuid

        from .models import load_model, model_fingerprint
        from .models.loading import import_libraries

        import_libraries()  # before any thread of this process needs transformers or PEFT
        _check_model_argument(model)
        if config is not None and not isinstance(config, EditConfig):
            raise ConfigError(f"config must be an EditConfig, not {type(config).__name__}")
        if config is not None and overrides:
            config = EditConfig.from_dict({**config.resolved(), **overrides})
        self.config = config or EditConfig(**overrides)
        _check_input_files(self.config)  # before the model loads: a FIFO or /dev/zero is refused at once
        self.progress = progress
        # as TRL's report_to/logging_dir: TensorBoard event files in logging_dir, by default OUT/tensorboard
        self.report_to = tracking.check(report_to)
        self.logging_dir = Path(logging_dir) if logging_dir is not None else None
        seed_everything(self.config.seed)
        if isinstance(model, tuple):
            base, tokenizer = model
            self.model_name = getattr(base.config, "_name_or_path", "in-memory")
            if dist.launched():
                dist.init(cpu=next(base.parameters()).device.type == "cpu")
        else:
            # a model's own Python code runs only when the user asks for it explicitly
            base, tokenizer = load_model(model, device=dist.device(device), trust_remote_code=trust_remote_code)
            # a local folder is recorded as an absolute path, so the run record works from any folder
            local = Path(os.fspath(model)).expanduser()
            self.model_name = str(local.resolve()) if _looks_like_path(model) and local.exists() else str(model)
        self.run_id = uuid.uuid4().hex  # the identity this Editor writes into its run records and adapters
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.fingerprint = model_fingerprint(base)
        self.fmt = PromptFormat(tokenizer, self.config.template)
        self.max_length = getattr(base.config, "max_position_embeddings", None)
        for p in base.parameters():
            p.requires_grad_(False)
        self._saved_scope = None  # the scope a loaded adapter was saved with
        # kept across updates: the base model's DPO reference scores (it never changes), and which
        # edits held at the last update's final test (the adapter has not moved since)
        self._base_scores = BaseScores()
        self._held: dict[tuple, bool] = {}
        self._keys: dict = {}  # a locate-then-edit adapter's earlier edit keys (AlphaEdit keeps them unchanged)
        if self.config.spec.solver is not None and dist.world_size() > 1:
            raise ConfigError(f"{self.config.method} runs in one process (its update is a closed-form solve, with no "
                              f"gradient to share); start it without torchrun or accelerate launch")
        self._adapter_method = None  # the method a loaded adapter was made with, by its marker
        if adapter is not None:
            saved = adapters.marker(adapter)
            self._adapter_method = saved.get("method")
            if config is not None or "method" in overrides:  # a method chosen to continue it: refused at once
                _same_family(adapter, self.config, self._adapter_method)
            self.model = adapters.load_existing(base, adapter, self.fingerprint, trainable=True,
                                                model_name=self.model_name)
            self.parent = str(adapters.find_adapter_dir(adapter))
            if self.config.spec.solver is not None:
                from .editors.apply import read_keys

                self._keys = read_keys(adapters.find_adapter_dir(adapter))
            self.history = adapters.trained_edits(adapter)
            self._saved_scope = saved.get("scope")
        else:
            self.model = adapters.attach_new(base, self.config)
            self.parent = None
            self.history: list[Edit] = []  # every edit the adapter holds, oldest first
        self._scope = (None, None)  # (the history it was made from, the Scope)
        self.updates: list[UpdateRecord] = lineage(adapter, self.history) if adapter is not None else []
        self._anchors = None  # anchor prompt → (prompt ids, the unedited model's answer ids), made once each

    # ------------------------------------------------------------------------------------------
    @property
    def scope_mode(self) -> str:
        """EditConfig.scope as given, else the scope the loaded adapter was saved with, else the row's."""
        if self.config.scope is not None:
            return self.config.scope
        return self._saved_scope or self.config.value("scope")

    @property
    def scope(self):
        """The :class:`corsa.scope.Scope` of the edits the adapter holds; None when it answers everything."""
        from .scope import Scope

        if self.scope_mode == "all":
            return None
        made_from, scope = self._scope
        if made_from is not self.history:
            scope = Scope(self.history)
            self._scope = (self.history, scope)
        return scope

    def ask(self, prompts: list[str] | str, max_new_tokens: int | None = None, base: bool = False) -> list[str]:
        """Greedy answers of the edited model (or of the base model with `base=True`).

        Under a launcher the prompts are split across workers and every worker gets all the
        answers back, so every worker must call it with the same prompts.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        bad = next((i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()), None)
        if bad is not None:
            raise DataError(f"prompt {bad} is {'empty' if isinstance(prompts[bad], str) else type(prompts[bad]).__name__}"
                            f"; every prompt must be non-empty text")
        n = self.config.max_new_tokens if max_new_tokens is None else max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"max_new_tokens must be a whole number of at least 1, not {n!r}")
        if self.max_length is not None and prompts:  # refused as an edit longer than the context is, not cut silently
            lengths = [len(self.fmt.prompt_ids(p)) for p in prompts]
            i = max(range(len(prompts)), key=lengths.__getitem__)
            if lengths[i] >= self.max_length:
                raise DataError(f"prompt {i} is {lengths[i]} tokens, which leaves no room for an answer in the "
                                f"model's context of {self.max_length}; shorten it")
            n = min(n, self.max_length - lengths[i])  # the answer ends where the context does
        answer = lambda part: generate(self.model, self.fmt, part, n)  # noqa: E731
        if base:
            with self.model.disable_adapter():
                return dist.gather_sharded(answer, prompts)
        return routed(self.model, self.scope, prompts, lambda part, _: dist.gather_sharded(answer, part))

    def fill_old_targets(self, edits: list[Edit]) -> list[Edit]:
        """Where y⁻ is not given, the unedited model's own short answer (corsa.old_answers).

        Always with the adapter disabled: a continued adapter's edits never become a later y⁻.
        """
        from . import old_answers

        return old_answers.fill(self.model, self.fmt, edits, self.config.max_new_tokens)

    def _not_edited_again(self, edits: list[Edit]) -> list[Edit]:
        """The earlier edits whose prompt `edits` does not edit again (a prompt keeps only its newest edit)."""
        new = {normalise(e.prompt) for e in edits}
        return [e for e in self.history if normalise(e.prompt) not in new]

    def replay_set(self, edits: list[Edit], index: int = 0) -> list[Edit]:
        """The earlier edits this update trains again (EditConfig.replay and replay_budget).

        They come from the adapter's own record (`self.history`, saved with the adapter), so
        continuing a saved adapter replays without the old files. An earlier edit whose prompt
        this update edits again is superseded, never replayed. With a budget, lost edits (whose
        greedy answer no longer holds) come first and the rest are drawn with the seed.
        """
        from .engine import holding

        mode, budget = self.config.value("replay"), self.config.replay_budget
        earlier = self._not_edited_again(edits)
        if mode == "none" or not earlier:
            return []
        if mode == "all" and not (budget and len(earlier) > budget):
            return earlier
        held = self._known_held(earlier)
        if held is None:
            enc = encode_edits(self.fmt, earlier, None, need_rejected=True, eos=self.config.value("train_eos"))
            held = holding(self.model, self.fmt, enc, self.config, self.config.eval_batch_size)
        lost = [e for e, ok in zip(earlier, held) if not ok]
        rest = [] if mode == "lost" else [e for e, ok in zip(earlier, held) if ok]
        random.Random(self.config.seed + 1000 * index).shuffle(rest)
        chosen = lost + rest
        return chosen[:budget] if budget else chosen

    def _known_held(self, edits: list[Edit]) -> list[bool] | None:
        """Whether each of `edits` holds, from the last update's final test; None if any is unknown."""
        held = [self._held.get(_held_key(e)) for e in edits]
        return None if any(h is None for h in held) else held

    def _plausibility(self, encoded, eos: bool):
        """plausibility(i, answer) for negatives.rivals: log p_base of `answer`'s first token after
        encoded[i]'s prompt (None outside the base model's most likely tokens), kept across updates."""
        nexts = self._base_scores.next_token(self.model, self.fmt, [enc.prompt for enc in encoded],
                                             self.config.eval_batch_size)
        first = functools.lru_cache(maxsize=None)(lambda answer: self.fmt.answer_ids(answer, eos)[0])
        return lambda i, answer: nexts[i].get(first(answer))

    def anchors(self, edits: list[Edit], index: int = 0):
        """The preservation term's anchors (corsa.preserve), without any evaluation probe of `edits`.

        The unedited model's answers are computed once per anchor prompt and kept for later updates.
        """
        from . import preserve

        if self._anchors is None:
            self._anchors = {}
            self._generic = preserve.read_anchors(self.config.anchors)
        k = self.config.value("swap_anchors")
        swapped = preserve.swapped_prompts(edits, self.history + list(edits), k, self.config.seed + 1000 * index) if k else []
        prompts = preserve.without_probes(list(dict.fromkeys(self._generic + swapped)), list(edits) + self.history)
        todo = [p for p in prompts if p not in self._anchors]
        if todo:
            made = preserve.prepare(self.model, self.fmt, todo)
            self._anchors.update(zip(made.prompts, made.pairs))
        kept = [p for p in prompts if p in self._anchors]  # an anchor the model answers with nothing is left out
        return preserve.Anchors(kept, [self._anchors[p] for p in kept])

    def update(self, edits, out: str | os.PathLike | None = None, limit: int | None = None,
               index: int | None = None) -> UpdateRecord:
        """Train the adapter on one update's edits; save adapter and run record under `out`.

        index: the update's position in a sequence (it seeds the batch order); by default the
        number of updates the adapter has been through (its lineage, kept across continuations).
        A resumed run passes it explicitly.
        """
        import contextlib

        with output_lock(out) if out is not None else contextlib.nullcontext():
            return self._update(edits, out, limit, index)

    def _update(self, edits, out, limit, index) -> UpdateRecord:
        _same_family(self.parent, self.config, self._adapter_method)
        if out is not None:
            self.check_room(out)
            dist.on_main(check_ours, out, "run")  # never replace or delete what corsa did not write
        board_dir = self._board_dir(out)  # refused before any work, on every worker
        edits = self.fill_old_targets(as_edits(edits, limit))
        if not edits:
            raise ConfigError("no edits to train on")
        index = len(self.updates) if index is None else index
        cfg = self.config
        replay = self.replay_set(edits, index)
        pool = edits + replay
        eos = cfg.value("train_eos")
        encoded = encode_edits(self.fmt, pool, self.max_length, need_rejected=True, eos=eos)
        kinds = cfg.value("negatives")  # () on a row without DPO
        if {"interference", "rivals"} & set(kinds):
            room = max(0, cfg.value("max_negatives") - ("online" in kinds))  # leave one for online
            seen = self.history + edits
            found = negatives.interference(pool, seen, room) if "interference" in kinds else [[] for _ in pool]
            if "rivals" in kinds and room and len({normalise(e.target_new) for e in seen}) > 1:  # else no rival to find
                found = negatives.merge(found, negatives.rivals(pool, seen, self._plausibility(encoded, eos), room), room)
            for enc, answers in zip(encoded, found):
                enc.extra = [self.fmt.answer_ids(a, eos) for a in answers]
        anchors = self.anchors(pool, index) if cfg.value("preserve") > 0 else None
        # the steps go to log.partial.jsonl; it becomes log.jsonl together with the new adapter and
        # run record, so the folder never shows one run's record beside another run's log
        log_path = Path(out) / PARTIAL_LOG if out is not None else None
        if log_path is not None and dist.is_main() and log_path.exists():
            log_path.unlink()
        started = time.time()
        # the lineage's steps so far: a continued adapter's curves go on where the last update's ended
        board = (tracking.TensorBoard(board_dir, first_step=sum(u.result.steps for u in self.updates), update=index + 1)
                 if board_dir is not None and dist.is_main() else None)
        replay_held = self._known_held(replay) if replay else None
        held_before = self._held
        self._held = {}  # from here on the adapter moves
        start = self._snapshot()  # a failed update leaves the adapter as it found it
        try:
            if cfg.spec.solver is not None:  # ROME, MEMIT, AlphaEdit: a closed-form change, no training
                from .editors.apply import apply_update

                result = apply_update(self.model, self.fmt, pool, cfg, self._keys, self.fingerprint, self.progress,
                                      log=_say if self.progress and dist.is_main() else None)
                if log_path is not None and dist.is_main():
                    log_path.write_text(jsonl_text(result.history), encoding="utf-8")
            else:
                result = train_update(self.model, self.fmt, pool, encoded, cfg, log_path=log_path,
                                      progress=self.progress, update_index=index, n_new=len(edits), anchors=anchors,
                                      on_log=board, base_scores=self._base_scores, replay_held=replay_held)
        except BaseException as failed:
            self._restore(start)
            self._held = held_before
            if isinstance(failed, TrainingError) and out is not None:  # the adapter this update started from
                dist.on_main(adapters.save, self.model, Path(out) / "adapter-last-good", self.fingerprint,
                             self._marker(), edits=self.history)
            raise
        finally:
            if board is not None:
                board.close()
        record = UpdateRecord(index, edits, result, Path(out) if out is not None else None,
                              [e.id for e in replay])
        self.updates.append(record)
        self.history = self._not_edited_again(edits) + list(edits)
        if result.held is not None:
            self._held = {_held_key(e): h for e, h in zip(pool, result.held)}
        if out is not None:
            self.save(out, record, started)
        return record

    def _snapshot(self) -> dict:
        """A copy of what an update changes: the adapter's weights and a locate-then-edit adapter's keys."""
        weights = {n: p.detach().clone() for n, p in self.model.named_parameters() if "lora_" in n}
        return {"weights": weights, "keys": {k: v.clone() for k, v in self._keys.items()}}

    def _restore(self, start: dict) -> None:
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                if n in start["weights"]:
                    p.copy_(start["weights"][n])
        self._keys.clear()
        self._keys.update(start["keys"])

    def _board_dir(self, out) -> Path | None:
        """Where this update's TensorBoard event files go (report_to="tensorboard"), else None."""
        if self.report_to != "tensorboard":
            return None
        if self.logging_dir is None and out is None:
            raise ConfigError("report_to='tensorboard' needs a logging_dir, or an out folder to put tensorboard/ in")
        return self.logging_dir or Path(out) / "tensorboard"

    def _marker(self) -> dict:
        """What is saved beside the adapter besides the base fingerprint (adapter.MARKER)."""
        return {"model": self.model_name, "scope": self.scope_mode, "method": self.config.method,
                "run_id": self.run_id}

    def save(self, out: str | os.PathLike, record: UpdateRecord | None = None, started: float | None = None) -> Path:
        """Write the adapter, the edits (with their filled y⁻) and the run record into `out`.

        Under a launcher the main process writes and the others wait for it (call it on all). Like
        `update`, it holds `out` and refuses a folder with files corsa cannot prove it wrote.
        """
        with output_lock(out):
            dist.on_main(check_ours, out, "run")
            return dist.on_main(self._write, Path(out), record, started)

    def check_room(self, out) -> None:
        """Refuse `out`, before any work, where an update's results will not fit: room for the new
        adapter beside the old one, and for adapter-last-good should a step fail."""
        dist.on_main(check_writable, out, 2 * self.adapter_bytes() + 20 * 2**20)

    def adapter_bytes(self) -> int:
        """The size of the adapter's weights as saved (what each saved copy needs on disk)."""
        return sum(p.numel() * p.element_size() for n, p in self.model.named_parameters() if "lora_" in n)

    def _write(self, out: Path, record: UpdateRecord | None, started: float | None) -> Path:
        """Stage the adapter, edits, run record and step log complete, then publish them together."""
        staged = {}
        with writing(out, staged):
            staged["adapter"] = stage_dir(out, "adapter")
            more = None
            if self._keys:
                from .editors.apply import write_keys

                more = functools.partial(write_keys, keys=self._keys)
            adapters.write(self.model, staged["adapter"], self.fingerprint, self._marker(), edits=self.history,
                           more=more)
            if record is not None:
                staged["edits.jsonl"] = stage_text(out, "edits.jsonl", jsonl_text(e.to_dict() for e in record.edits))
            staged["run.json"] = stage_text(out, "run.json", json.dumps(self._run_record(started), indent=2,
                                                                       ensure_ascii=False, default=str) + "\n")
            if record is not None:  # this update's steps (none for an update of no step) replace the last log
                staged["log.jsonl"] = stage_text(out, "log.jsonl", "")
                if (out / PARTIAL_LOG).exists():
                    os.replace(out / PARTIAL_LOG, staged["log.jsonl"])
            publish(out, staged)
        return out

    def _run_record(self, started: float | None) -> dict:
        run = {
            "corsa_run": 1,
            "run_id": self.run_id,
            "model": self.model_name,
            "base_fingerprint": self.fingerprint,
            "parent_adapter": self.parent,
            "template": self.fmt.name,
            "config": self.config.resolved(),
            "scope": self.scope.describe() if self.scope else {"mode": "all"},
            "versions": library_versions(),
            "world_size": dist.world_size(),
            "updates": [{
                "index": r.index + 1,
                "edit_ids": r.edit_ids,
                "replayed_ids": r.replayed,
                "steps": r.result.steps,
                "epochs": r.result.epochs,
                "stopped_early": r.result.stopped_early,
                "train_seconds": round(r.result.seconds, 3),
                "final": dict(r.result.last_step),
            } for r in self.updates],
            "started_at": started,
            "finished_at": time.time(),
        }
        return run


def edit(edits, model=DEFAULT_MODEL, method: str = "corsa", adapter=None, out=None, progress: bool = True,
         **overrides) -> Editor:
    """Edit `model` with `edits` in one update and return the Editor holding the edited model."""
    editor = Editor(model, adapter=adapter, method=method, progress=progress, **overrides)
    editor.update(edits, out=out)
    return editor


def ask(prompts, model=DEFAULT_MODEL, adapter=None, max_new_tokens: int = ASK_NEW_TOKENS, template: str = "auto",
        device: str | None = None) -> list[str]:
    """Greedy answers of a base model, with an adapter (and the scope saved with it) if one is given."""
    editor = Editor(model, adapter=adapter, template=template, device=device, progress=False)
    if adapter is None:
        return editor.ask(prompts, max_new_tokens, base=True)
    return editor.ask(prompts, max_new_tokens)
