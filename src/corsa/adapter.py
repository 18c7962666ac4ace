"""The one LoRA adapter that carries every edit: create, load (safetensors only), save."""

from __future__ import annotations

import json
from pathlib import Path

from .config import EditConfig
from .errors import ConfigError, ModelError
from .io import atomic_dir

ADAPTER_WEIGHTS = "adapter_model.safetensors"
from .models import PICKLE_SUFFIXES
MARKER = "corsa-adapter.json"
TRAINED_EDITS = "trained-edits.jsonl"  # every edit the adapter holds, oldest first (replay reads it)


def attach_new(model, cfg: EditConfig):
    """Wrap the frozen base model with a fresh LoRA adapter (B = 0, so θ+φ = θ at start)."""
    from peft import LoraConfig, get_peft_model

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
    for candidate in (path / "adapter", path):
        if (candidate / "adapter_config.json").exists():
            return candidate
    raise ModelError(f"{path} holds no adapter (no adapter_config.json in it or in {path / 'adapter'})")


def marker(path: str | Path) -> dict:
    """What corsa saved beside a saved adapter (MARKER: base fingerprint, model, scope); {} if none."""
    file = find_adapter_dir(path) / MARKER
    try:
        return json.loads(file.read_text()) if file.exists() else {}
    except (OSError, ValueError) as e:
        raise ModelError(f"{file} is damaged ({type(e).__name__}: {e}); remove it to load the adapter "
                         f"without its base-model check") from None


def load_existing(model, path: str | Path, fingerprint: str | None = None, trainable: bool = True):
    """Load a saved adapter to keep training it; pickle weights are refused, never unpickled."""
    from peft import PeftModel

    folder = find_adapter_dir(path)
    if not (folder / ADAPTER_WEIGHTS).exists():
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
    try:
        return PeftModel.from_pretrained(model, str(folder), is_trainable=trainable)
    except (ValueError, RuntimeError, KeyError) as e:
        raise ModelError(f"adapter {folder} does not fit this model: {str(e).splitlines()[0]}") from None


def save(model, path: str | Path, fingerprint: str | None = None, extra: dict | None = None,
         edits=None) -> Path:
    """Save the adapter (safetensors) into `path`, atomically replacing an older one.

    `edits`, the edits the adapter has been trained on, go into the same folder
    (TRAINED_EDITS), so the adapter and its record of edits always appear together.
    """
    path = Path(path)
    with atomic_dir(path) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / MARKER).write_text(json.dumps({"base_fingerprint": fingerprint, **(extra or {})}, indent=2))
        if edits is not None:
            (tmp / TRAINED_EDITS).write_text("".join(json.dumps(e.to_dict(), ensure_ascii=False) + "\n"
                                                     for e in edits), encoding="utf-8")
    return path


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
