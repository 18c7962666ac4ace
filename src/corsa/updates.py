"""A sequence of updates on one adapter, resumable after any interruption.

`corsa edit --updates K` splits the edits (in file order: a user's file is often a history)
into K consecutive updates and trains them one after another on the same adapter. After
each update its folder `OUT/update-k/` is complete (adapter, run record, edits, log) and
`OUT/progress.json` says so. Rerunning the same command after a kill or Ctrl-C loads the
adapter of the last complete update and goes on with the next, so the result equals an
uninterrupted run with the same seed; a different command for the same folder is refused.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

from . import distributed as dist
from .config import upgraded
from .errors import ConfigError
from .files import atomic_write_json, stage_dir, stage_text
from .machine import peak_rss_mb
from .publish import check_writable, publish, writing
from .records import Edit
from .resume import last_readable, refuse_changes

PROGRESS = "progress.json"


def split_in_order(edits: list[Edit], k: int) -> list[list[Edit]]:
    """K consecutive updates of (nearly) equal size, the first ones one larger when needed."""
    if not 1 <= k <= len(edits):
        raise ConfigError(f"--updates {k}: must be between 1 and the number of edits ({len(edits)})")
    size, extra = divmod(len(edits), k)
    out, start = [], 0
    for i in range(k):
        end = start + size + (1 if i < extra else 0)
        out.append(edits[start:end])
        start = end
    return out


def settings_of(model: str, adapter, config, edits: list[Edit], k: int) -> dict:
    """What must be equal for a rerun to continue a saved sequence."""
    return {"model": str(model), "adapter": str(adapter) if adapter else None, "updates": k,
            "config": config.resolved(), "edit_ids": [e.id for e in edits]}


def completed(out: Path, settings: dict) -> int:
    """How many updates of this exact sequence are complete in `out` (0 for a new folder)."""
    path = out / PROGRESS
    if not path.exists():
        return 0
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} cannot be read ({e}); remove it to start over") from None
    settings_saved = dict(saved.get("settings") or {})
    if "config" in settings_saved:  # options added since it was saved read as what the run trained with
        settings_saved["config"] = upgraded(settings_saved["config"])
    refuse_changes(settings_saved, settings, out, "settings", "or choose another --out")
    # a complete update is one whose adapter is there and readable; never trust a count beyond that
    return last_readable(out, int(saved.get("completed", 0)))


def run_updates(make_editor, edits: list[Edit], k: int, out: Path, settings: dict, log=print, show_filled=None):
    """Train the K updates not yet complete; returns the Editor holding the final adapter.

    make_editor(adapter_or_None) builds the Editor, continuing from a saved adapter if given.
    show_filled(given, filled), if given, sees each update's edits before and after their missing
    y⁻ are filled (by the unedited model, before that update trains) and returns the edits to train.
    """
    out = Path(out)
    updates = split_in_order(edits, k)
    done = completed(out, settings)
    if done == k:
        editor = make_editor(out / f"update-{k}")
        if not published(out, k):  # a publish that failed (a full disk) is finished now
            dist.on_main(_publish_final, out, k)
            log(f"all {k} updates were complete in {out}; published the last one as {out / 'adapter'}")
        else:
            log(f"all {k} updates are already complete in {out}")
        return editor, updates
    if done:
        log(f"resuming: updates 1–{done} of {k} are complete in {out}; continuing with update {done + 1}")
    editor = make_editor(out / f"update-{done}" if done else None)
    # every update still to run saves an adapter, and the last is copied to OUT: room for all of them
    dist.on_main(check_writable, out, (k - done + 1) * editor.adapter_bytes() + (k - done) * 20 * 2**20)

    def before(i: int, edits: list[Edit]) -> list[Edit]:
        log(f"update {i}/{k}: {len(edits)} edits")
        return edits if show_filled is None else show_filled(edits, editor.fill_old_targets(edits))

    def after(i: int, record, folder: Path) -> None:
        log(f"update {i}/{k}: {record.result.steps} steps, {record.result.seconds:.1f} s, "
            f"peak memory {peak_rss_mb():.0f} MiB")
        dist.on_main(atomic_write_json, out / PROGRESS, {"settings": settings, "completed": i})

    # each update's index: the adapter's lineage so far (a resume included)
    train_in_order(editor, updates, done, lambda i: contextlib.nullcontext(out / f"update-{i}"), before, after)
    dist.on_main(_publish_final, out, k)
    return editor, updates


def train_in_order(editor, updates: list[list[Edit]], done: int, folder, before=None, after=None) -> None:
    """The sequence loop: updates[done:] trained one after another on `editor`'s one adapter.

    Update i (from 1) is saved into the folder that the context manager folder(i) yields;
    before(i, edits) returns the edits to train (default: as they are); after(i, record, folder)
    runs inside that context, once the update is saved. `corsa edit --updates K` and every
    method of `corsa bench` (corsa.comparison.harness) run their updates through it.
    """
    for i in range(done + 1, len(updates) + 1):
        edits = updates[i - 1] if before is None else before(i, updates[i - 1])
        with folder(i) as out:
            record = editor.update(edits, out=out)
            if after is not None:
                after(i, record, Path(out))


def published(out: Path, k: int) -> bool:
    """Whether OUT/adapter and OUT/run.json are the last update's (what _publish_final leaves)."""
    last, final = out / f"update-{k}", out / "adapter"
    try:
        return ((out / "run.json").read_bytes() == (last / "run.json").read_bytes()
                and all((final / f.name).read_bytes() == f.read_bytes() for f in (last / "adapter").iterdir()))
    except OSError:
        return False


def _publish_final(out: Path, k: int) -> None:
    """Copy the last update's adapter and run record to OUT together, so `--adapter OUT` continues the sequence.

    The run record beside the adapter carries the lineage, so `--adapter OUT` continues the numbering.
    """
    staged = {}
    with writing(out, staged):
        staged["adapter"] = stage_dir(out, "adapter")
        for f in (out / f"update-{k}" / "adapter").iterdir():
            shutil.copy2(f, staged["adapter"] / f.name)
        staged["run.json"] = stage_text(out, "run.json", (out / f"update-{k}" / "run.json").read_text())
        publish(out, staged)
