"""A run folder: the adapter, the edits, the run record and the step log, published together.

The run record (`run.json`) lists the updates the adapter has been through (its lineage), so
a continued adapter numbers its next update after them and keeps their seeds.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import adapter as adapters
from . import distributed as dist
from .editors.apply import write_keys
from .engine import UpdateResult
from .files import jsonl_text, stage_dir, stage_text
from .machine import library_versions
from .publish import PARTIAL_LOG, publish, writing
from .records import Edit


@dataclass
class UpdateRecord:
    index: int
    edits: list[Edit]
    result: UpdateResult
    out: Path | None = None
    replayed: list[str] = field(default_factory=list)  # ids of earlier edits trained again
    edit_ids: list[str] | None = None  # as the run record lists them (default: the ids of `edits`)
    # the update's final test (None: no test): the edits that held and those that did not, each as its
    # prompt and both answers (lifelong.held_key: ids may repeat), and the test's γ and train_eos
    held: dict | None = None

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


def last_held(adapter) -> dict | None:
    """run.json's "held" (see run_record), or None where the record has none or a damaged one."""
    try:
        held = adapters.run_record(adapter).get("held")
    except (OSError, ValueError, AttributeError):
        return None
    keys = lambda v: isinstance(v, list) and all(  # noqa: E731
        isinstance(k, list) and len(k) == 3 and all(x is None or isinstance(x, str) for x in k) for k in v)
    ok = (isinstance(held, dict) and set(held) == {"margin_target", "train_eos", "held", "lost"}
          and keys(held["held"]) and keys(held["lost"]))
    return held if ok else None


def write(editor, out: Path, record: UpdateRecord | None, started: float | None) -> Path:
    """Stage the Editor's adapter, the update's edits, the run record and step log complete, then
    publish them together (the main process only)."""
    staged = {}
    with writing(out, staged):
        staged["adapter"] = stage_dir(out, "adapter")
        more = functools.partial(write_keys, keys=editor.keys) if editor.keys else None
        adapters.write(editor.model, staged["adapter"], editor.fingerprint, editor.marker(), edits=editor.history,
                       more=more)
        if record is not None:
            staged["edits.jsonl"] = stage_text(out, "edits.jsonl", jsonl_text(e.to_dict() for e in record.edits))
        staged["run.json"] = stage_text(out, "run.json", json.dumps(run_record(editor, started), indent=2,
                                                                   ensure_ascii=False, default=str) + "\n")
        if record is not None:  # this update's steps (none for an update of no step) replace the last log
            staged["log.jsonl"] = stage_text(out, "log.jsonl", "")
            if (out / PARTIAL_LOG).exists():
                os.replace(out / PARTIAL_LOG, staged["log.jsonl"])
        publish(out, staged)
    return out


def run_record(editor, started: float | None) -> dict:
    """run.json: the model, the resolved config, the scope, the versions and every update of the lineage."""
    return {
        "corsa_run": 1,
        "run_id": editor.run_id,
        "model": editor.model_name,
        "base_fingerprint": editor.fingerprint,
        "parent_adapter": editor.parent,
        "template": editor.fmt.name,
        "config": editor.config.resolved(),
        "scope": editor.scope.describe() if editor.scope else {"mode": "all"},
        "versions": library_versions(),
        "world_size": dist.world_size(),
        # which held edits hold the saved adapter, from the last update's final test: a continued
        # adapter replays without testing its whole history first (Editor reads it back)
        "held": editor.updates[-1].held if editor.updates else None,
        "updates": [{
            "index": r.index + 1,
            "edit_ids": r.edit_ids,
            "replayed_ids": r.replayed,
            "steps": r.result.steps,
            "epochs": r.result.epochs,
            "stopped_early": r.result.stopped_early,
            "train_seconds": round(r.result.seconds, 3),
            "final": dict(r.result.last_step),
        } for r in editor.updates],
        "started_at": started,
        "finished_at": time.time(),
    }
