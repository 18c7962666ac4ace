"""The multi-update comparison behind `corsa bench` (method.md §6), in three parts.

- :mod:`.spec`: what a command asks for (:class:`BenchSpec`, `--set` overrides, the chosen edits);
- :mod:`.runner`: running it, resumable per (method, update) (:class:`Bench`, :func:`run_bench`);
- :mod:`.results`: the schema of ``results.json`` (:class:`BenchResults`, :class:`MethodResults`).

(`benchmarks/` at the top of the repository is another thing: speed and memory, not quality.)
"""

from .results import TIMING_KEYS, BenchResults, MethodResults
from .runner import Bench, run_bench
from .spec import BenchSpec, parse_sets, select, split

__all__ = ["Bench", "BenchResults", "BenchSpec", "MethodResults", "TIMING_KEYS", "parse_sets", "run_bench",
           "select", "split"]
