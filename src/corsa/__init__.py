"""corsa: knowledge editing of language models with CoRSA and its baselines."""

from . import loaders as _loaders
from .config import EditConfig, EvalSettings
from .errors import ConfigError, CorsaError, DataError, ModelError, TrainingError
from .methods import METHODS, Method, get_method
from .records import Edit, Probe

_LAZY = {"Editor", "ask", "edit"}  # from corsa.api, which imports torch: loaded on first use, so that
# `corsa --help` and the pure parts (config, methods, records, metrics) start without it


def __getattr__(name):
    if name in _LAZY:
        from . import api  # torch: loaded on first use

        return getattr(api, name)
    raise AttributeError(f"module 'corsa' has no attribute {name!r}")


__version__ = "0.1.0"


def load_edits(path, format: str = "auto", limit: int | None = None, on_invalid: str = "error"):
    """Read edits from a file in any supported format (see `corsa.loaders.FORMATS`).

    on_invalid="skip" drops records that break the rules (and logs how many) instead of failing.
    """
    return _loaders.load_edits(path, format=format, limit=limit, on_invalid=on_invalid)


__all__ = ["Editor", "edit", "ask", "EditConfig", "EvalSettings", "Edit", "Probe", "METHODS", "Method", "get_method",
           "load_edits", "CorsaError", "ConfigError", "DataError", "ModelError", "TrainingError"]
