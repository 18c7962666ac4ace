"""Code knowledge: API updates (CodeUpdateArena), programs run in :mod:`corsa.sandbox`, Pass@k, the code bench."""

import importlib

# where each name lives; imported on first use, so that corsa.loaders (which reads the tasks of a
# CodeUpdateArena record with corsa.code.arena) can import this package's modules while
# corsa.code.arena_file reads whole files with corsa.loaders
_HOME = {"ApiUpdate": "arena", "CodeTask": "arena", "split_tasks": "arena", "is_arena": "arena_file",
         "load_arena": "arena_file", "extract_code": "programs", "fence": "programs", "pass_at_k": "programs",
         "program_for": "programs", "task_prompt": "programs"}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_HOME)
