"""The multi-update comparison behind `corsa bench` (method.md §6), in three parts.

- :mod:`.spec`: what a command asks for (:class:`BenchSpec`, `--set` overrides, the chosen edits);
- :mod:`.runner`: running it, resumable per (method, update) (:class:`Bench`, :func:`run_bench`);
- :mod:`.results`: the schema of ``results.json`` (:class:`BenchResults`, :class:`MethodResults`).

(`benchmarks/` at the top of the repository is another thing: speed and memory, not quality.)
"""

import importlib

# where each name lives; imported on first use, so that `corsa bench --help` (which reads
# BenchSpec's defaults) does not pull in torch through the runner
_HOME = {"TIMING_KEYS": "results", "BenchResults": "results", "MethodResults": "results",
         "Bench": "runner", "run_bench": "runner",
         "BenchSpec": "spec", "parse_sets": "spec", "select": "spec", "split": "spec"}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Bench", "BenchResults", "BenchSpec", "MethodResults", "TIMING_KEYS", "parse_sets", "run_bench",
           "select", "split"]
