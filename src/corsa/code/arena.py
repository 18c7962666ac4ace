"""CodeUpdateArena (Liu et al. 2024, arXiv 2407.06249): API updates and their program-synthesis tasks.

An *API update* changes one library function (``math.sin`` gains ``unit='degrees'``): its new
signature, docstring, and an executable implementation that replaces the function at run time.
Each update comes with several *tasks*: a problem whose natural solution uses the update, the
solution's signature, a reference solution and unit tests.

Two file layouts are read, told apart by their keys:

- the grouped pre-release (``arena.jsonl``, the file in ``../shared/data``): one row per update,
  ``{"update": {...}, "prog_syn_examples": [{...}, ...]}``;
- the final release (``arena-ungrouped.jsonl``): one row per task, the update's fields and the
  task's side by side; rows of one ``update_id`` are gathered, in file order.

Every bad record is refused with the file, the record and the field (:class:`corsa.errors.DataError`):
the functions here read one record through the edit-file reader's record (``corsa.loaders.records_of``),
which knows where it sits. Reading a whole file: :mod:`corsa.code.arena_file`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ..errors import DataError

UPDATE_FIELDS = ("update_id", "function_path", "signature", "docstring", "description", "imports",
                 "implementation", "update_type", "package")
TASK_FIELDS = ("prog_syn_id", "scenario", "problem", "solution_signature", "unit_tests", "prog_syn_imports",
               "ref_solution")
_OPTIONAL = {"update_type", "package", "description", "scenario"}
_DEF = re.compile(r"^def\s+([A-Za-z_]\w*)\s*\(", re.M)
_TEST = re.compile(r"^def\s+(test_\w*)\s*\(", re.M)


@dataclass(frozen=True)
class ApiUpdate:
    """One API update: the function it changes and the code that installs the change."""

    id: str
    function_path: str  # the function as it was: "math.sin"
    signature: str  # the new signature, as the benchmark writes it
    docstring: str
    description: str | None
    imports: str  # keeps the old function (``old_sin = math.sin``) before the change
    implementation: str  # defines the new function
    new_name: str  # the name it is installed under: "sin", or "sine" for a renamed function
    update_type: str | None = None
    package: str | None = None

    @property
    def module(self) -> str:
        return self.function_path.rsplit(".", 1)[0]


@dataclass(frozen=True)
class CodeTask:
    """A program-synthesis task of one update, with its reference solution and unit tests."""

    id: str
    update: ApiUpdate
    scenario: str | None
    problem: str
    solution_signature: str
    imports: str
    reference: str
    unit_tests: str
    tests: tuple[str, ...]  # the names of the test functions, in file order

    @property
    def function_name(self) -> str:
        match = _DEF.search(self.solution_signature)
        return match.group(1) if match else self.solution_signature.split("(")[0].split()[-1]


def edit_id(task: CodeTask) -> str:
    """The id of the edit a task becomes: ``cua-`` and its ``prog_syn_id`` without brackets."""
    return "cua-" + task.id.replace("[", "").replace("]", "").replace(":", "-")


def _new_name(rec, keys: tuple, implementation: str, signature: str, path: str) -> str:
    """The name the implementation installs: the function it defines that the signature names."""
    defined = _DEF.findall(implementation)
    if not defined:
        raise rec.error("defines no function (no top-level 'def')", ".".join((*keys, "implementation")))
    for name in defined:
        if re.search(rf"(^|[\s.]){re.escape(name)}\s*\(", signature):
            return name
    old = path.rsplit(".", 1)[-1]
    return old if old in defined else defined[0]


def _update(rec, keys: tuple) -> ApiUpdate:
    get = {f: rec.text(*keys, f, optional=f in _OPTIONAL) for f in UPDATE_FIELDS}
    path = get["function_path"]
    if "." not in path:
        raise rec.error(f"expected a dotted path such as math.sin, found {path!r}", ".".join((*keys, "function_path")))
    return ApiUpdate(id=get["update_id"], function_path=path, signature=get["signature"], docstring=get["docstring"],
                     description=get["description"], imports=get["imports"], implementation=get["implementation"],
                     new_name=_new_name(rec, keys, get["implementation"], get["signature"], path),
                     update_type=get["update_type"], package=get["package"])


def _task(rec, keys: tuple, update: ApiUpdate) -> CodeTask:
    get = {f: rec.text(*keys, f, optional=f in _OPTIONAL) for f in TASK_FIELDS}
    tests = tuple(_TEST.findall(get["unit_tests"]))
    if not tests:
        raise rec.error("defines no test function (def test_...)", ".".join((*keys, "unit_tests")))
    return CodeTask(id=get["prog_syn_id"], update=update, scenario=get["scenario"], problem=get["problem"],
                    solution_signature=get["solution_signature"], imports=get["prog_syn_imports"],
                    reference=get["ref_solution"], unit_tests=get["unit_tests"], tests=tests)


def tasks_of(rec) -> list[tuple[str, CodeTask]]:
    """The tasks of one record of either layout, each with the field path its task fields sit under."""
    data = rec.data
    if not isinstance(data, dict):
        raise rec.error("expected an object (an update or a task)")
    if "update" in data:  # grouped: {"update": {...}, "prog_syn_examples": [...]}
        update = _update(rec, ("update",))
        examples = rec.value("prog_syn_examples")
        if not isinstance(examples, list) or not examples:
            raise rec.error("expected a non-empty list of tasks", "prog_syn_examples")
        return [(f"prog_syn_examples[{j}].", _task(rec, ("prog_syn_examples", j), update))
                for j in range(len(examples))]
    if "prog_syn_id" in data:  # ungrouped: one task per row, the update's fields beside it
        return [("", _task(rec, (), _update(rec, ())))]
    raise DataError("is not a CodeUpdateArena record: expected 'update' (grouped file) or "
                    "'prog_syn_id' (the final, ungrouped release)", path=str(rec.path), record=rec.name())


def split_tasks(updates: list[list[CodeTask]], seed: int) -> dict[str, list[str]]:
    """Which tasks of each update are trained and which are held out, seeded per update.

    Half of an update's tasks, rounded down and at least one, are trained; the rest (at least
    half) are held out, so that a score on them measures the update, not a memorised solution.
    The choice depends only on the seed and the update's id, not on which other updates are in
    the file. Returns ``{"train": [task ids], "held_out": [task ids]}``.
    """
    train, held = [], []
    for tasks in updates:
        ids = [t.id for t in tasks]
        random.Random(f"{seed}:{tasks[0].update.id}").shuffle(ids)
        k = max(1, len(ids) // 2) if len(ids) > 1 else 0
        train += ids[:k]
        held += ids[k:]
    return {"train": train, "held_out": held}
