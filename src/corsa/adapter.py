"""The one LoRA adapter that carries every edit: create, load (safetensors only), save."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError, ModelError
from .publish import atomic_dir

if TYPE_CHECKING:  # annotations only: config is above adapter in the import graph
    from .config import EditConfig

ADAPTER_WEIGHTS = "adapter_model.safetensors"
MARKER = "corsa-adapter.json"
TRAINED_EDITS = "trained-edits.jsonl"  # every edit the adapter holds, oldest first (replay reads it)


def attach_new(model, cfg: EditConfig):
    """Wrap the frozen base model with a fresh LoRA adapter (B = 0, so θ+φ = θ at start)."""
    from peft import LoraConfig, get_peft_model

    if cfg.spec.solver is not None:  # ROME, MEMIT, AlphaEdit: the MLP output projections they edit
        from .editors.apply import lora_config

        return get_peft_model(model, lora_config(model, cfg))
    targets = "all-linear" if cfg.target_modules == ("all-linear",) else list(cfg.target_modules)
    if targets != "all-linear":
        names = {n.split(".")[-1] for n, _ in model.named_modules()}
        missing = [t for t in targets if t not in names]
        if missing:
            linear = sorted({n.split(".")[-1] for n, m in model.named_modules()
                             if type(m).__name__ == "Linear"})
            raise ConfigError(f"target module(s) {', '.join(missing)} are not in this model; "
                              f"its linear modules are: {', '.join(linear)} (or use 'all-linear')")
    check_size(model, cfg, targets)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def adapter_estimate(model, r: int, targets) -> int:
    """Bytes that training a rank-`r` adapter on `targets` takes: A and B, their gradients and AdamW's two moments."""
    total = 0
    for name, module in model.named_modules():
        if type(module).__name__ != "Linear" or not hasattr(module, "in_features"):
            continue
        if targets != "all-linear" and name.split(".")[-1] not in targets:
            continue
        if targets == "all-linear" and name.split(".")[-1] == "lm_head":
            continue
        total += r * (module.in_features + module.out_features)
    return total * 4 * 4  # float32: weights, gradients, two AdamW moments


def available_bytes(device) -> int | None:
    """Free memory where the adapter will live (the GPU's, or the machine's MemAvailable); None if unknown."""
    import torch

    try:
        if getattr(device, "type", str(device)).startswith("cuda"):
            return torch.cuda.mem_get_info(device)[0]
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, RuntimeError):
        return None
    return None


def check_size(model, cfg: EditConfig, targets) -> None:
    """Refuse a LoRA rank whose adapter cannot fit, before anything is allocated, with the estimate."""
    need = adapter_estimate(model, cfg.lora_r, targets)
    free = available_bytes(next(model.parameters()).device)
    if free is not None and need > free:
        raise ConfigError(f"a rank-{cfg.lora_r} adapter needs about {need / 2**30:.1f} GiB to train (weights, "
                          f"gradients and optimizer state) and {free / 2**30:.1f} GiB is free; choose a smaller "
                          f"--lora-r")


def find_adapter_dir(path: str | Path) -> Path:
    """Accept a run folder (holding `adapter/`) or the adapter folder itself."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"adapter folder {path} does not exist")
    _finish_publish(path)
    for candidate in (path / "adapter", path):
        if (candidate / "adapter_config.json").exists():
            return candidate
    raise ModelError(f"{path} holds no adapter (no adapter_config.json in it or in {path / 'adapter'})")


def _finish_publish(path: Path) -> None:
    """A run killed while publishing its adapter left a journal: finish it, unless a run holds the folder."""
    import contextlib

    from .errors import CorsaError
    from .locks import output_lock
    from .publish import JOURNAL

    if path.is_dir() and any(path.glob(JOURNAL.format("*"))):
        with contextlib.suppress(CorsaError, OSError), output_lock(path):
            pass  # taking the folder replays the journal; a read-only or busy folder is left as it is


MAX_MARKER_BYTES = 16 * 2**20  # a marker, a run record or an adapter_config.json
MAX_WEIGHT_BYTES = 64 * 2**30  # an adapter's weights (a rank-256 adapter of a 70B model is ~ 7 GiB)
MAX_TRAINED_EDITS_BYTES = 1 << 30  # the same cap as an edit file


def _read_json(file: Path, what: str, error=ModelError):
    """A JSON document corsa wrote beside an adapter, read bounded (regular file, size cap); keys given twice refused."""
    from .files import read_text_bounded

    text = read_text_bounded(file, MAX_MARKER_BYTES, what, error)

    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        twice = next((k for k in keys if keys.count(k) > 1), None)
        if twice is not None:
            raise ValueError(f"the key {twice!r} is given twice")
        return dict(pairs)

    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except (ValueError, RecursionError) as e:
        raise error(f"{what} {file} is damaged ({type(e).__name__}: {_shown(e)}); remove it to load the adapter "
                    f"without it") from None


def _shown(value) -> str:
    """A value from a file, as an error message may show it: escaped, and cut to 200 characters."""
    from .text import printable

    text = printable(str(value))
    return text if len(text) <= 200 else text[:200] + "…"


def _check_marker(data, file: Path) -> dict:
    """The marker's fields, each of the type corsa writes; anything else names the file and the field."""
    from .methods import METHODS
    from .scope import MODES

    if not isinstance(data, dict):
        raise ModelError(f"{file} is damaged: it holds {type(data).__name__}, not the object corsa writes; remove it "
                         f"to load the adapter without its base-model check")

    def bad(field, need):
        return ModelError(f"{file} is damaged: field '{field}' is {_shown(repr(data[field]))}, not {need}; remove "
                          f"the file to load the adapter without its base-model check")

    for key in ("base_fingerprint", "model", "run_id"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise bad(key, "text")
    if "method" in data and (not isinstance(data["method"], str) or data["method"] not in METHODS):
        raise bad("method", f"one of corsa's methods ({', '.join(METHODS)})")
    if data.get("scope") is not None and (not isinstance(data["scope"], str) or data["scope"] not in MODES):
        raise bad("scope", f"one of {', '.join(MODES)}")
    if "files" in data and not (isinstance(data["files"], dict)
                                and all(isinstance(v, dict) for v in data["files"].values())):
        raise bad("files", "the list of files corsa wrote")
    return data


def marker(path: str | Path) -> dict:
    """What corsa saved beside a saved adapter (MARKER: base fingerprint, model, scope, method); {} if none.

    Every field is checked (a tampered marker is an error naming the file and the field, never
    a traceback or a silent default).
    """
    file = find_adapter_dir(path) / MARKER
    if not file.exists() and not file.is_symlink():
        return {}
    return _check_marker(_read_json(file, "adapter marker"), file)


def run_record(path: str | Path) -> dict:
    """The run record (run.json) corsa wrote beside a saved adapter; {} if there is none or it cannot be read."""
    from .errors import CorsaError

    file = find_adapter_dir(path).parent / "run.json"
    if not file.exists():
        return {}
    try:
        record = _read_json(file, "run record")
    except CorsaError:
        return {}
    return record if isinstance(record, dict) and record.get("corsa_run") == 1 else {}


def _check_config(folder: Path, model_name: str | None, saved: dict) -> None:
    """adapter_config.json read bounded and checked before PEFT sees it: its LoRA fields, and the
    base model it names when corsa's marker (with its fingerprint) is missing."""
    from .models import hub_id

    file = folder / "adapter_config.json"
    config = _read_json(file, "adapter config")
    if not isinstance(config, dict):
        raise ModelError(f"{file} is damaged: it holds {type(config).__name__}, not an adapter config")

    def bad(field, need):
        raise ModelError(f"{file} is damaged: field '{field}' is {_shown(repr(config[field]))}, not {need}")

    r = config.get("r")
    if "r" in config and (isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= 1 << 20):
        bad("r", "a whole number from 1 to 1,048,576")
    alpha = config.get("lora_alpha")
    if "lora_alpha" in config and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                                   or not 0 < alpha < float("inf")):
        bad("lora_alpha", "a positive number")
    targets = config.get("target_modules")
    if targets is not None and not (isinstance(targets, str) or isinstance(targets, list)
                                    and all(isinstance(t, str) for t in targets)):
        bad("target_modules", "a module name or a list of them")
    if config.get("peft_type", "LORA") != "LORA":
        bad("peft_type", "LORA (corsa loads LoRA adapters only)")
    named = config.get("base_model_name_or_path")
    if not saved.get("base_fingerprint") and model_name is not None and isinstance(named, str) and named:
        # no fingerprint to go by: the config's base model must be this one where both are known hub ids
        theirs, ours = hub_id(named), hub_id(str(model_name))
        if theirs and ours and theirs.lower() != ours.lower():
            raise ModelError(f"adapter {folder} was made for {_shown(named)} (its adapter_config.json says so), not "
                             f"{ours}; load it with the model it was trained on")


def load_existing(model, path: str | Path, fingerprint: str | None = None, trainable: bool = True,
                  model_name: str | None = None):
    """Load a saved adapter to keep training it; pickle weights are refused, never unpickled."""
    from peft import PeftModel

    folder = find_adapter_dir(path)
    if not (folder / ADAPTER_WEIGHTS).exists():
        from .models import PICKLE_SUFFIXES

        pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise ModelError(f"adapter {folder} holds pickle weights ({', '.join(pickles)}), which can run "
                             f"arbitrary code when loaded; corsa loads safetensors only. Convert it with "
                             f"a trusted tool to {ADAPTER_WEIGHTS}")
        raise ModelError(f"adapter {folder} has no {ADAPTER_WEIGHTS}")
    saved_marker = marker(folder)
    _check_config(folder, model_name, saved_marker)
    if fingerprint is not None:
        made_for = saved_marker.get("base_fingerprint")
        if made_for and made_for != fingerprint:
            raise ModelError(f"adapter {folder} was made for a different base model "
                             f"(fingerprint {made_for}, this model is {fingerprint}); load it with the "
                             f"model it was trained on")
    saved = _read_weights(folder)
    try:
        peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=trainable)
    except (ValueError, RuntimeError, KeyError) as e:
        raise ModelError(f"adapter {folder} does not fit this model: {str(e).splitlines()[0]}") from None
    _check_keys(peft_model, saved, folder)
    return peft_model


def _read_weights(folder: Path) -> dict:
    """The adapter's tensors, refused when the file is damaged or a value is NaN or infinite."""
    import torch
    from safetensors.torch import load_file

    import os
    import stat

    from .models import damaged_weights

    file = folder / ADAPTER_WEIGHTS
    info = os.stat(file)
    if not stat.S_ISREG(info.st_mode):  # a FIFO would hang the reader below, a device never end
        raise ModelError(f"the adapter weights {file} are not a regular file (a device, pipe or socket)")
    if info.st_size > MAX_WEIGHT_BYTES:
        raise ModelError(f"the adapter weights {file} are {info.st_size / 2**30:.1f} GiB, more than the "
                         f"{MAX_WEIGHT_BYTES // 2**30} GiB corsa reads for an adapter")
    damage = damaged_weights(folder)
    if damage:
        raise ModelError(f"the adapter weights in {folder} are damaged ({damage}): the file is truncated or "
                         f"is not safetensors. Use another copy of the adapter; for an update of a "
                         f"`corsa edit --updates` or `corsa bench` run, rerun the same command to train it again")
    saved = load_file(str(folder / ADAPTER_WEIGHTS))
    bad = [k for k, v in saved.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ModelError(f"the adapter {folder} holds NaN or infinite weights ({len(bad)} tensor(s), the first: "
                         f"{bad[0]}), so every answer it gives is garbage; use the adapter of an earlier update "
                         f"or OUT/adapter-last-good")
    return saved


def _check_keys(peft_model, saved: dict, folder: Path) -> None:
    """PEFT only warns about an adapter whose tensors do not match the model, and then answers with
    an untrained LoRA; refuse it instead, naming what is missing or foreign."""
    from peft import get_peft_model_state_dict

    expected = set(get_peft_model_state_dict(peft_model))
    missing, foreign = sorted(expected - set(saved)), sorted(set(saved) - expected)
    if missing or foreign:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of the {len(expected)} tensors this model's adapter needs are "
                         f"missing (the first: {missing[0]})")
        if foreign:
            parts.append(f"{len(foreign)} tensor(s) fit no layer of it (the first: {foreign[0]})")
        raise ModelError(f"adapter {folder} does not fit this model: {'; '.join(parts)}. It was saved for "
                         f"another model or its tensors were renamed; load it with the model it was trained on")


def save(model, path: str | Path, fingerprint: str | None = None, extra: dict | None = None,
         edits=None) -> Path:
    """Save the adapter (safetensors) into `path`, atomically replacing an older one."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        write(model, tmp, fingerprint, extra, edits)
    return path


def write(model, folder: str | Path, fingerprint: str | None = None, extra: dict | None = None,
          edits=None, more=None) -> None:
    """Write the adapter's files into the (new, empty) `folder`.

    `edits`, the edits the adapter has been trained on, go into the same folder
    (TRAINED_EDITS), so the adapter and its record of edits always appear together. `more(folder)`
    writes further files (a locate-then-edit adapter's keys). The marker is written last and
    lists every file with its size and sha256: what makes the folder provably corsa's.
    """
    from .files import jsonl_text
    from .ownership import manifest
    from .models import hub_id

    folder = Path(folder)
    model.save_pretrained(str(folder), safe_serialization=True)
    name = hub_id(str((extra or {}).get("model", "")))
    if name:  # PEFT records the machine-local folder it loaded from; the hub id is what others can load
        config_file = folder / "adapter_config.json"
        config = json.loads(config_file.read_text())
        config["base_model_name_or_path"] = name
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True))
    if edits is not None:
        (folder / TRAINED_EDITS).write_text(jsonl_text(e.to_dict() for e in edits), encoding="utf-8")
    if more is not None:
        more(folder)
    files = manifest(folder, [f.name for f in folder.iterdir() if f.name != MARKER], hashed=None)
    (folder / MARKER).write_text(json.dumps({"base_fingerprint": fingerprint, **(extra or {}), "files": files},
                                            indent=2, ensure_ascii=False))


def trained_edits(path: str | Path) -> list:
    """The edits a saved adapter has been trained on (empty for an adapter saved without them).

    Read back exactly as written (not through the edit-file checks: an adapter continued with
    the Python API may hold two edits named `edit-0`, and a y⁻ filled by the edited model may
    equal y⁺), so a resumed run replays the very edits an uninterrupted one does.
    """
    from .errors import DataError
    from .records import Edit

    from .files import jsonl_lines, read_text_bounded
    from .loaders import check_trained_edit

    file = find_adapter_dir(path) / TRAINED_EDITS
    if not file.exists():
        return []
    edits = []
    text = read_text_bounded(file, MAX_TRAINED_EDITS_BYTES, "the adapter's record of trained edits", DataError)
    for n, line in jsonl_lines(text):
        try:
            edit = check_trained_edit(json.loads(line))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError, DataError) as e:
            raise DataError(f"the adapter's record of trained edits is damaged ({_shown(e)}); "
                            f"remove it to continue without replay", path=str(file), record=f"line {n}") from None
        edits.append(edit)
    return edits
