"""The multi-update comparison behind `corsa bench` (method.md §6), in four parts.

- :mod:`.spec`: what a command asks for (:class:`BenchSpec`, `--set` overrides, the chosen edits);
- :mod:`.harness`: running it, resumable per (method, update), in a domain (:class:`Bench`, :func:`run_bench`);
- :mod:`.facts`: the facts domain (edit files; :mod:`corsa.code.bench` is the API-update domain);
- :mod:`.results`: the schema of ``results.json`` (:class:`BenchResults`, :class:`MethodResults`).

(`benchmarks/` at the top of the repository is another thing: speed and memory, not quality.)
"""

import importlib

# where each name lives; imported on first use, so that `corsa bench --help` (which reads
# BenchSpec's defaults) does not pull in torch through the harness
_HOME = {"TIMING_KEYS": "results", "BenchResults": "results", "MethodResults": "results",
         "Bench": "harness", "run_bench": "harness",
         "BenchSpec": "spec", "parse_sets": "spec", "select": "spec"}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Bench", "BenchResults", "BenchSpec", "MethodResults", "TIMING_KEYS", "parse_sets", "run_bench",
           "select"]
