"""Resuming: a rerun continues a folder only when it was made with the same settings.

One rule for `corsa bench` (bench.json, each method's config.json) and `corsa edit --updates`
(progress.json): the saved settings and the rerun's are compared key by key, nested keys
named with dots, and any difference is an error that names the keys, never a silent mix.
And one rule for where a rerun goes on: after the last complete update-k whose adapter can be
read (:func:`last_readable`); a damaged or missing adapter is trained again.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import distributed as dist
from .errors import ConfigError
from .files import atomic_write_json
from .models import damaged_weights


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


def refuse_changes(saved: dict, now: dict, where: Path, what: str, hint: str) -> None:
    """The error for a rerun whose settings `now` differ from the `saved` ones in folder `where`."""
    diffs = differences(saved, json.loads(json.dumps(now, default=str)))
    if diffs:
        raise ConfigError(f"{where} holds a run with other {what}: {'; '.join(diffs)}. Rerun with "
                          f"the saved settings to resume, {hint}")


def finished_evals(folder: Path, k: int) -> list[dict]:
    """The eval.json of folder/update-1 … update-`k` that a run finished, in order (a gap ends the list).

    The run goes on from the last finished update's adapter: one that cannot be read is trained again.
    """
    evals = []
    for j in range(1, k + 1):
        try:
            evals.append(json.loads((folder / f"update-{j}" / "eval.json").read_text()))
        except (OSError, ValueError):
            break
    return evals[:last_readable(folder, len(evals))]


def last_readable(folder: Path, done: int) -> int:
    """`done`, or less: the last of folder/update-1 … update-`done` whose adapter can be read."""
    while done > 0 and not readable_adapter(folder / f"update-{done}" / "adapter"):
        done -= 1
    return done


def readable_adapter(adapter: Path) -> bool:
    return (adapter / "adapter_model.safetensors").is_file() and not damaged_weights(adapter)


def check_same(path: Path, now: dict, what: str, hint: str, saved_as=None) -> None:
    """Write `now` to `path`, or, when a previous run left it, refuse to go on if it differs.

    `saved_as` reads the saved record as today's code writes it (config.upgraded for a training
    configuration). Under a launcher the main worker checks and writes; every worker stops with
    its error.
    """
    dist.on_main(_check_here, path, now, what, hint, saved_as)


def _check_here(path: Path, now: dict, what: str, hint: str, saved_as=None) -> None:
    if path.exists():
        saved = json.loads(path.read_text())
        refuse_changes(saved_as(saved) if saved_as else saved, now, path.parent, what, hint)
    else:
        atomic_write_json(path, now)
