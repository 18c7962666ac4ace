"""Resolving a model name (an alias, a local folder or a hub id) to what ``from_pretrained`` loads."""

from __future__ import annotations

import os
from pathlib import Path

from ..config import DEFAULT_MODEL
from ..errors import ModelError
from .aliases import ALIASES, prepare_alias

# Offline, a hub lookup must fail in seconds, not after the ~10 s x retries of the HF defaults.
HUB_PROBE_TIMEOUT_S = 5.0
_TRUE = {"1", "on", "yes", "true"}


def hub_id(model_name: str) -> str | None:
    """The hub id behind a model name when it is known (an alias's original, or a hub id itself)."""
    if model_name in ALIASES:
        return ALIASES[model_name].original
    if "/" in model_name and not model_name.startswith(("/", ".", "~")) and not Path(model_name).exists():
        return model_name
    return None


def hub_offline() -> bool:
    """True when the user asked for no network (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(variable, "").strip().lower() in _TRUE
               for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_model(name_or_path: str) -> str:
    """Turn an alias, a local folder or a hub id into what ``from_pretrained`` should load.

    Returns a local folder, except for a hub id that is reachable online, which is returned as
    is so that transformers downloads it. Every failure is a :class:`ModelError` saying what to do.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name_or_path in ALIASES:
        return str(prepare_alias(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is a folder but not a model: it has no config.json (a model "
                             f"folder holds config.json, *.safetensors weights and the tokenizer files)")
        return str(path)
    if path.exists():
        raise ModelError(f"{path} is a file; --model takes a model folder, a hub id or an alias "
                         f"({', '.join(sorted(ALIASES))})")
    try:
        validate_repo_id(name_or_path)
        is_hub_id = True
    except HFValidationError:
        is_hub_id = False
    if not is_hub_id or name_or_path.startswith(("/", "./", "../", "~")):
        raise ModelError(f"no such folder: {path}; --model takes a model folder, a hub id "
                         f"(org/name) or an alias ({', '.join(sorted(ALIASES))})")
    return _resolve_hub_id(name_or_path)


def _resolve_hub_id(repo_id: str) -> str:
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    if not hub_offline():
        try:
            huggingface_hub.model_info(repo_id, timeout=HUB_PROBE_TIMEOUT_S)
            return repo_id
        except RepositoryNotFoundError:
            raise ModelError(f"no model '{repo_id}' on the Hugging Face hub (or it is private and you "
                             f"are not logged in: `hf auth login`)") from None
        except Exception:  # noqa: BLE001 — DNS, proxy, TLS, timeout or 5xx: all mean "use the cache"
            reason = "the Hugging Face hub cannot be reached"
    else:
        reason = "the machine is offline (HF_HUB_OFFLINE=1)"
    cached = huggingface_hub.try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        return str(Path(cached).parent)
    raise ModelError(f"model '{repo_id}' is not in the Hugging Face cache and {reason}. Download it "
                     f"where there is network (`hf download {repo_id}`), or point --model at a local "
                     f"folder holding config.json and *.safetensors, or use the built-in alias "
                     f"{DEFAULT_MODEL}")
