"""Code knowledge: API updates (CodeUpdateArena), programs run in :mod:`corsa.sandbox`, Pass@k."""

from .arena import ApiUpdate, CodeTask, is_arena, load_arena, split_tasks
from .programs import extract_code, fence, pass_at_k, program_for

__all__ = ["ApiUpdate", "CodeTask", "extract_code", "fence", "is_arena", "load_arena", "pass_at_k",
           "split_tasks", "program_for"]
