"""Resuming: a rerun continues a folder only when it was made with the same settings.

One rule for `corsa bench` (bench.json, each method's config.json) and `corsa edit --updates`
(progress.json): the saved settings and the rerun's are compared key by key, nested keys
named with dots, and any difference is an error that names the keys, never a silent mix.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import distributed as dist
from .errors import ConfigError
from .io import atomic_write_json


def differences(saved: dict, now: dict, prefix: str = "") -> list[str]:
    """Every key whose value differs, as 'key: saved …, now …' (nested dicts key by key)."""
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: saved {a!r}, now {b!r}")
    return out


def check_same(path: Path, now: dict, what: str, hint: str) -> None:
    """Write `now` to `path`, or, when a previous run left it, refuse to go on if it differs.

    Under a launcher the main worker checks and writes; every worker stops with its error.
    """
    dist.on_main(_check_here, path, now, what, hint)


def _check_here(path: Path, now: dict, what: str, hint: str) -> None:
    if path.exists():
        saved = json.loads(path.read_text())
        diffs = differences(saved, json.loads(json.dumps(now, default=str)))
        if diffs:
            raise ConfigError(f"{path.parent} holds a run with other {what}: {'; '.join(diffs)}. Rerun with "
                              f"the saved settings to resume, {hint}")
    else:
        atomic_write_json(path, now)
