"""Reading a CodeUpdateArena file (either layout, :mod:`corsa.code.arena`): its tasks, one list per API update."""

from __future__ import annotations

import os

from ..errors import DataError
from ..loaders import records_of
from .arena import CodeTask, tasks_of


def load_arena(path: str | os.PathLike) -> list[list[CodeTask]]:
    """The tasks of a CodeUpdateArena file, one list per API update, in file order."""
    groups: dict[str, list[CodeTask]] = {}
    seen_tasks: set[str] = set()
    for rec in records_of(path):
        tasks = [task for _, task in tasks_of(rec)]
        for task in tasks:
            if task.id in seen_tasks:
                raise rec.error(f"task {task.id} appears twice", "prog_syn_id")
            seen_tasks.add(task.id)
        update = tasks[0].update
        group = groups.setdefault(update.id, [])
        if group and group[0].update != update:
            raise rec.error(f"update {update.id} is given twice with different fields", "update_id")
        group.extend(tasks)
    return list(groups.values())


def is_arena(path: str | os.PathLike) -> bool:
    """Whether the file's first record is a CodeUpdateArena record (either layout)."""
    try:
        records = records_of(path)
    except DataError:
        return False
    first = records[0].data if records else None
    return isinstance(first, dict) and (("update" in first and "prog_syn_examples" in first)
                                        or ("prog_syn_id" in first and "update_id" in first))
