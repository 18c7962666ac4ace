"""The one LoRA adapter that carries every edit: create, load (safetensors only), save."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError, ModelError
from .io import atomic_dir

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
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


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
    from .io import JOURNAL, output_lock

    if path.is_dir() and any(path.glob(JOURNAL.format("*"))):
        with contextlib.suppress(CorsaError, OSError), output_lock(path):
            pass  # taking the folder replays the journal; a read-only or busy folder is left as it is


def marker(path: str | Path) -> dict:
    """What corsa saved beside a saved adapter (MARKER: base fingerprint, model, scope, method); {} if none."""
    file = find_adapter_dir(path) / MARKER
    try:
        return json.loads(file.read_text()) if file.exists() else {}
    except (OSError, ValueError) as e:
        raise ModelError(f"{file} is damaged ({type(e).__name__}: {e}); remove it to load the adapter "
                         f"without its base-model check") from None


def run_record(path: str | Path) -> dict:
    """The run record (run.json) corsa wrote beside a saved adapter; {} if there is none or it cannot be read."""
    file = find_adapter_dir(path).parent / "run.json"
    try:
        record = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def load_existing(model, path: str | Path, fingerprint: str | None = None, trainable: bool = True):
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
    if fingerprint is not None:
        made_for = marker(folder).get("base_fingerprint")
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

    from .models import damaged_weights

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
          edits=None) -> None:
    """Write the adapter's files into the (new, empty) `folder`.

    `edits`, the edits the adapter has been trained on, go into the same folder
    (TRAINED_EDITS), so the adapter and its record of edits always appear together.
    """
    from .models import hub_id

    folder = Path(folder)
    model.save_pretrained(str(folder), safe_serialization=True)
    name = hub_id(str((extra or {}).get("model", "")))
    if name:  # PEFT records the machine-local folder it loaded from; the hub id is what others can load
        config_file = folder / "adapter_config.json"
        config = json.loads(config_file.read_text())
        config["base_model_name_or_path"] = name
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True))
    (folder / MARKER).write_text(json.dumps({"base_fingerprint": fingerprint, **(extra or {})}, indent=2))
    if edits is not None:
        (folder / TRAINED_EDITS).write_text("".join(json.dumps(e.to_dict(), ensure_ascii=False) + "\n"
                                                    for e in edits), encoding="utf-8")


def trained_edits(path: str | Path) -> list:
    """The edits a saved adapter has been trained on (empty for an adapter saved without them).

    Read back exactly as written (not through the edit-file checks: an adapter continued with
    the Python API may hold two edits named `edit-0`, and a y⁻ filled by the edited model may
    equal y⁺), so a resumed run replays the very edits an uninterrupted one does.
    """
    from .errors import DataError
    from .records import Edit

    file = find_adapter_dir(path) / TRAINED_EDITS
    if not file.exists():
        return []
    edits = []
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            edits.append(Edit.from_dict(json.loads(line)))
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"the adapter's record of trained edits is damaged ({type(e).__name__}: {e}); "
                            f"remove it to continue without replay", path=str(file), record=f"line {n}") from None
    return edits
