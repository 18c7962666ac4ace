"""The Python API: an Editor holds a model and its one adapter across updates.

    import corsa
    editor = corsa.Editor("smollm2-135m", method="corsa")
    editor.update("my_edits.jsonl", out="runs/first")
    editor.ask(["The Eiffel Tower is located in the city of"])

`corsa.edit(...)` is the one-call form of the same.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
import uuid
from pathlib import Path

import numpy as np
import torch

from . import adapter as adapters
from . import distributed as dist
from . import old_answers, runs, tracking
from .config import ASK_NEW_TOKENS, DEFAULT_MODEL, EditConfig
from .editors.apply import apply_update, read_keys
from .engine import UpdateResult, train_update
from .errors import ConfigError, DataError, TrainingError
from .generate import generate
from .editors.stats import MAX_CORPUS_BYTES
from .files import check_input_file, jsonl_text
from .locks import output_lock
from .ownership import check_ours
from .publish import PARTIAL_LOG, check_writable
from .lifelong import Lifelong, Plan, not_edited_again
from .loaders import check_edit_objects, edits_from_records, load_edits
from .methods import METHODS
from .models import load_model, model_fingerprint
from .models.loading import import_libraries
from .preserve import MAX_ANCHOR_BYTES
from .prompts import PromptFormat
from .records import Edit
from .rephrase import Bank
from .runs import UpdateRecord, last_held, lineage
from .scope import Scope, routed
from .text import printable

__all__ = ["Editor", "UpdateRecord", "ask", "as_edits", "continued_config", "edit", "lineage", "seed_everything"]


def _same_family(adapter, config: EditConfig, saved=None) -> None:
    """Refuse to continue a trained adapter with ROME, MEMIT or AlphaEdit, or one of theirs with training:
    the two kinds carry different layers (all projections against a few MLP outputs).

    Checked when an update is about to train, never when an adapter is only read (ask, eval,
    export read every method's adapter whatever the Editor's method is).
    """
    row = METHODS.get(saved) if isinstance(saved, str) else None
    if row is not None and (row.solver is None) != (config.spec.solver is None):
        kind = lambda r: "a closed-form edit of MLP layers" if r.solver else "a trained LoRA adapter"  # noqa: E731
        raise ConfigError(f"{adapter} holds {kind(row)} ({saved}); {config.method} makes {kind(config.spec)}, so it "
                          f"cannot continue it. Continue it with {saved}, or start a new adapter")


def continued_config(adapter, options: dict, say=None) -> EditConfig:
    """The config of an update from `options`: a continued adapter keeps the method it was trained with
    unless `options` names one.

    (corsa-lifelong's replay, scope and γ would otherwise quietly turn into plain corsa's on the
    second update.) The method is in the adapter's marker, or, for adapters saved before it was,
    in the run record beside the adapter; with neither, the default. say(message) hears the choice.
    """
    if adapter is None or options.get("method") is not None:
        return EditConfig(**options)
    config = adapters.run_record(adapter).get("config")
    saved = adapters.marker(adapter).get("method") or (config.get("method") if isinstance(config, dict) else None)
    if saved is not None and (not isinstance(saved, str) or saved not in METHODS):
        raise ConfigError(f"the run record beside {adapter} names the method {printable(repr(saved))}, which is "
                          f"not one of corsa's; pass --method (method=) to choose one")
    if saved is None or saved == EditConfig.method:
        return EditConfig(**options)
    if say is not None and dist.is_main():
        say(f"continuing {adapter} with {saved}, the method it was trained with (--method, or method=, to change it)")
    try:
        return EditConfig(**{**options, "method": saved})
    except ConfigError as e:
        raise ConfigError(f"{e} (the method {saved} is the one {adapter} was trained with; "
                          f"pass --method, or method=, to train it with another)") from None


def _say(message: str) -> None:
    """A one-line message beside any progress bar, on stderr."""
    import sys

    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


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
        return load_edits(edits, limit=limit, on_invalid=on_invalid)
    if isinstance(edits, (dict, Edit)):
        raise DataError(f"edits must be a list of edits, a file path or Edit objects; one {type(edits).__name__} "
                        f"was given: wrap it in a list ([edit])", path="<edits given in Python>")
    if isinstance(edits, (bytes, bytearray)) or not hasattr(edits, "__iter__"):
        raise DataError(f"edits must be a list of edits, a file path or Edit objects, not {type(edits).__name__}",
                        path="<edits given in Python>")
    edits = list(edits)
    if edits and all(isinstance(e, Edit) for e in edits):
        return check_edit_objects(edits[:limit] if limit is not None else edits)
    # dicts are checked as a file's records are, and Edit objects mixed in with them alike
    records = [e.to_dict() if isinstance(e, Edit) else e for e in edits]
    return edits_from_records(records, limit, on_invalid=on_invalid)


def _looks_like_path(model) -> bool:
    return isinstance(model, os.PathLike) or str(model).startswith((".", "/", "~")) or os.sep in str(model) and \
        Path(str(model)).expanduser().exists()


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


def _config_of(adapter, config: EditConfig | None, overrides: dict, progress: bool) -> EditConfig:
    """An Editor's config: `config` with `overrides` on top, else the overrides as the continued adapter's
    method takes them (`continued_config`); the files it will read checked before any model loads."""
    if config is not None and not isinstance(config, EditConfig):
        raise ConfigError(f"config must be an EditConfig, not {type(config).__name__}")
    if config is not None:
        config = EditConfig.from_dict({**config.resolved(), **overrides}) if overrides else config
    else:
        config = continued_config(adapter, overrides, say=_say if progress else None)
    # the files an update will read (--anchors, --stats-corpus): regular files of bounded size (a FIFO
    # or /dev/zero is refused at once)
    if config.anchors is not None:
        check_input_file(config.anchors, MAX_ANCHOR_BYTES, "--anchors", ConfigError)
    if config.stats_corpus is not None:
        check_input_file(config.stats_corpus, MAX_CORPUS_BYTES, "--stats-corpus", ConfigError)
    if config.rephrase_templates is not None:
        Bank.read(config.rephrase_templates)  # read whole: a bad bank is an error before any model loads
    return config


def _load_base(model, device, trust_remote_code: bool):
    """(base model, tokenizer, the name the run record gives it) of Editor's `model`."""
    _check_model_argument(model)
    if isinstance(model, tuple):
        base, tokenizer = model
        if dist.launched():
            dist.init(cpu=next(base.parameters()).device.type == "cpu")
        return base, tokenizer, getattr(base.config, "_name_or_path", "in-memory")
    # a model's own Python code runs only when the user asks for it explicitly
    base, tokenizer = load_model(model, device=dist.device(device), trust_remote_code=trust_remote_code)
    # a local folder is recorded as an absolute path, so the run record works from any folder
    local = Path(os.fspath(model)).expanduser()
    return base, tokenizer, str(local.resolve()) if _looks_like_path(model) and local.exists() else str(model)


def _snapshot(model, keys: dict) -> dict:
    """A copy of what an update changes: the adapter's weights and a locate-then-edit adapter's keys."""
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    return {"weights": weights, "keys": {k: v.clone() for k, v in keys.items()}}


def _restore(model, keys: dict, start: dict) -> None:
    """Put back what `_snapshot` copied: a failed update leaves the adapter as it found it."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in start["weights"]:
                p.copy_(start["weights"][n])
    keys.clear()
    keys.update(start["keys"])


def _checked_prompts(prompts) -> list[str]:
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    bad = next((i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()), None)
    if bad is not None:
        raise DataError(f"prompt {bad} is {'empty' if isinstance(prompts[bad], str) else type(prompts[bad]).__name__}"
                        f"; every prompt must be non-empty text")
    return prompts


def _answer_tokens(fmt: PromptFormat, max_length: int | None, prompts: list[str], n) -> int:
    """How many tokens an answer to `prompts` may have: n, where the longest prompt leaves room for them."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"max_new_tokens must be a whole number of at least 1, not {n!r}")
    if max_length is not None and prompts:  # refused as an edit longer than the context is, not cut silently
        lengths = [len(fmt.prompt_ids(p)) for p in prompts]
        i = max(range(len(prompts)), key=lengths.__getitem__)
        if lengths[i] >= max_length:
            raise DataError(f"prompt {i} is {lengths[i]} tokens, which leaves no room for an answer in the "
                            f"model's context of {max_length}; shorten it")
        n = min(n, max_length - lengths[i])  # the answer ends where the context does
    return n


class Editor:
    """A base model, its prompt format and the one LoRA adapter that every update trains.

    model: an alias (smollm2-135m), a local folder, a hub id, or an already loaded
    (model, tokenizer) pair. adapter: a run or adapter folder to continue from; it keeps the
    method it was trained with unless `method=` (or a config) is given (`continued_config`).

    Under `torchrun` or `accelerate launch` every worker builds its own Editor with the same
    arguments (each on its own GPU) and calls the same methods in the same order: training
    and `ask` are split across the workers, and only the main one writes files.
    """

    def __init__(self, model=DEFAULT_MODEL, adapter: str | os.PathLike | None = None,
                 config: EditConfig | None = None, device: str | None = None, progress: bool = True,
                 trust_remote_code: bool = False, report_to: str = "none",
                 logging_dir: str | os.PathLike | None = None, **overrides):
        import_libraries()  # before any thread of this process needs transformers or PEFT
        self.config = _config_of(adapter, config, overrides, progress)
        self.progress = progress
        # as TRL's report_to/logging_dir: TensorBoard event files in logging_dir, by default OUT/tensorboard
        self.report_to = tracking.check(report_to)
        self.logging_dir = Path(logging_dir) if logging_dir is not None else None
        seed_everything(self.config.seed)
        base, tokenizer, self.model_name = _load_base(model, device, trust_remote_code)
        self.run_id = uuid.uuid4().hex  # the identity this Editor writes into its run records and adapters
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.fingerprint = model_fingerprint(base)
        self.fmt = PromptFormat(tokenizer, self.config.template)
        self.max_length = getattr(base.config, "max_position_embeddings", None)
        for p in base.parameters():
            p.requires_grad_(False)
        if self.config.spec.solver is not None and dist.world_size() > 1:
            raise ConfigError(f"{self.config.method} runs in one process (its update is a closed-form solve, with no "
                              f"gradient to share); start it without torchrun or accelerate launch")
        self.parent, self.history, self.updates, self.keys = None, [], [], {}  # history: every edit held, oldest first
        # a loaded adapter's scope and method (its marker); the Scope and the history it was made from
        self._saved_scope, self._adapter_method, self._scope = None, None, (None, None)
        held = None
        if adapter is not None:
            saved = adapters.marker(adapter)
            self._adapter_method, self._saved_scope = saved.get("method"), saved.get("scope")
            if config is not None or "method" in overrides:  # a method chosen to continue it: refused at once
                _same_family(adapter, self.config, self._adapter_method)
            self.model = adapters.load_existing(base, adapter, self.fingerprint, trainable=True,
                                                model_name=self.model_name)
            self.parent = str(adapters.find_adapter_dir(adapter))
            if self.config.spec.solver is not None:  # a locate-then-edit adapter's earlier edit keys (AlphaEdit's)
                self.keys = read_keys(adapters.find_adapter_dir(adapter))
            self.history = adapters.trained_edits(adapter)
            self.updates = lineage(adapter, self.history)
            held = last_held(adapter)
        else:
            self.model = adapters.attach_new(base, self.config)
        self.lifelong = Lifelong(self.model, self.fmt, self.config, self.max_length)  # kept across updates
        if held is not None:  # what the saved adapter's last test found
            self.lifelong.restore(held)

    @property
    def scope_mode(self) -> str:
        """EditConfig.scope as given, else the scope the loaded adapter was saved with, else the row's."""
        if self.config.scope is not None:
            return self.config.scope
        return self._saved_scope or self.config.value("scope")

    @property
    def scope(self) -> Scope | None:
        """The :class:`corsa.scope.Scope` of the edits the adapter holds; None when it answers everything."""
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
        prompts = _checked_prompts(prompts)
        n = _answer_tokens(self.fmt, self.max_length, prompts,
                           self.config.max_new_tokens if max_new_tokens is None else max_new_tokens)
        answer = lambda part: generate(self.model, self.fmt, part, n)  # noqa: E731
        if base:
            with self.model.disable_adapter():
                return dist.gather_sharded(answer, prompts)
        return routed(self.model, self.scope, prompts, lambda part, _: dist.gather_sharded(answer, part))

    def fill_old_targets(self, edits: list[Edit]) -> list[Edit]:
        """Where y⁻ is not given, the unedited model's own short answer (corsa.old_answers).

        Always with the adapter disabled: a continued adapter's edits never become a later y⁻.
        """
        return old_answers.fill(self.model, self.fmt, edits, self.config.max_new_tokens)

    def update(self, edits, out: str | os.PathLike | None = None, limit: int | None = None,
               index: int | None = None) -> UpdateRecord:
        """Train the adapter on one update's edits; save adapter and run record under `out`.

        index: the update's position in a sequence (it seeds the batch order); by default the
        number of updates the adapter has been through (its lineage, kept across continuations).
        A resumed run passes it explicitly.
        """
        if out is not None:  # refused before the lock is taken, and again under it
            dist.on_main(check_ours, out, "run")
        with output_lock(out) if out is not None else contextlib.nullcontext():
            return self._update(edits, out, limit, index)

    def _update(self, edits, out, limit, index) -> UpdateRecord:
        _same_family(self.parent, self.config, self._adapter_method)
        if out is not None:
            self.check_room(out)
            dist.on_main(check_ours, out, "run")  # never replace or delete what corsa did not write
        board_dir = tracking.board_dir(self.report_to, self.logging_dir, out)  # refused before any work
        edits = self.fill_old_targets(as_edits(edits, limit))
        if not edits:
            raise ConfigError("no edits to train on")
        index = len(self.updates) if index is None else index
        plan = self.lifelong.plan(self.history, edits, index, scoped=self.scope_mode != "all")  # replay, negatives, anchors
        # the steps go to log.partial.jsonl; it becomes log.jsonl together with the new adapter and
        # run record, so the folder never shows one run's record beside another run's log
        log_path = Path(out) / PARTIAL_LOG if out is not None else None
        if log_path is not None and dist.is_main() and log_path.exists():
            log_path.unlink()
        started = time.time()
        # the lineage's steps so far: a continued adapter's curves go on where the last update's ended
        board = (tracking.TensorBoard(board_dir, first_step=sum(u.result.steps for u in self.updates), update=index + 1)
                 if board_dir is not None and dist.is_main() else None)
        start = _snapshot(self.model, self.keys)  # a failed update leaves the adapter as it found it
        try:
            result = self._train(plan, index, log_path, board)
        except BaseException as failed:
            _restore(self.model, self.keys, start)
            self.lifelong.undo(plan)
            if isinstance(failed, TrainingError) and out is not None:  # the adapter this update started from
                dist.on_main(adapters.save, self.model, Path(out) / "adapter-last-good", self.fingerprint,
                             self.marker(), edits=self.history)
            raise
        finally:
            if board is not None:
                board.close()
        self.lifelong.tested(plan.pool, result.held)
        record = UpdateRecord(index, edits, result, Path(out) if out is not None else None, [e.id for e in plan.replay],
                              held=self.lifelong.last_test())
        self.updates.append(record)
        self.history = not_edited_again(self.history, edits) + list(edits)
        if out is not None:
            self.save(out, record, started)
        return record

    def _train(self, plan: Plan, index: int, log_path: Path | None, board) -> UpdateResult:
        """The update itself: a closed-form change (ROME, MEMIT, AlphaEdit) or training (engine.train_update)."""
        if self.config.spec.solver is None:
            return train_update(self.model, self.fmt, plan.pool, plan.encoded, self.config, log_path=log_path,
                                progress=self.progress, update_index=index, n_new=len(plan.edits),
                                anchors=plan.anchors, on_log=board, base_scores=self.lifelong.base_scores,
                                replay_held=plan.replay_held)
        result = apply_update(self.model, self.fmt, plan.pool, self.config, self.keys, self.fingerprint,
                              self.progress, log=_say if self.progress and dist.is_main() else None)
        if log_path is not None and dist.is_main():
            log_path.write_text(jsonl_text(result.history), encoding="utf-8")
        return result

    def marker(self) -> dict:
        """What is saved beside the adapter besides the base fingerprint (adapter.MARKER)."""
        return {"model": self.model_name, "scope": self.scope_mode, "method": self.config.method, "run_id": self.run_id}

    def save(self, out: str | os.PathLike, record: UpdateRecord | None = None, started: float | None = None) -> Path:
        """Write the adapter, the edits (with their filled y⁻) and the run record into `out` (corsa.runs),
        holding `out` and refusing a folder with files corsa cannot prove it wrote, as `update` does.
        Under a launcher the main process writes and the others wait for it (call it on all)."""
        dist.on_main(check_ours, out, "run")  # refused before the lock is taken, and again under it
        with output_lock(out):
            dist.on_main(check_ours, out, "run")
            return dist.on_main(runs.write, self, Path(out), record, started)

    def check_room(self, out) -> None:
        """Refuse `out`, before any work, where an update's results will not fit: room for the new
        adapter beside the old one, and for adapter-last-good should a step fail."""
        dist.on_main(check_writable, out, 2 * self.adapter_bytes() + 20 * 2**20)

    def adapter_bytes(self) -> int:
        """The size of the adapter's weights as saved (what each saved copy needs on disk)."""
        return sum(p.numel() * p.element_size() for n, p in self.model.named_parameters() if "lora_" in n)


def edit(edits, model=DEFAULT_MODEL, method: str | None = None, adapter=None, out=None, progress: bool = True,
         **overrides) -> Editor:
    """Edit `model` with `edits` in one update and return the Editor holding the edited model.

    method: by default corsa, or the method a continued `adapter` was trained with."""
    if method is not None:
        overrides["method"] = method
    editor = Editor(model, adapter=adapter, progress=progress, **overrides)
    editor.update(edits, out=out)
    return editor


def ask(prompts, model=DEFAULT_MODEL, adapter=None, max_new_tokens: int = ASK_NEW_TOKENS, template: str = "auto",
        device: str | None = None) -> list[str]:
    """Greedy answers of a base model, with an adapter (and the scope saved with it) if one is given."""
    editor = Editor(model, adapter=adapter, template=template, device=device, progress=False)
    if adapter is None:
        return editor.ask(prompts, max_new_tokens, base=True)
    return editor.ask(prompts, max_new_tokens)
