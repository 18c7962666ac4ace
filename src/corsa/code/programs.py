"""A task's prompt, the program that tests a model's answer to it, and Pass@k.

:func:`task_prompt` is what the model is asked (x of the edit a task becomes; never the
update's documentation).
:func:`program_for` builds what the sandbox runs for a candidate solution of a task:

1. the task's imports, then the update's (both keep the old function: ``old_sin = math.sin``;
   they must run *before* the change, or ``old_sin`` would be the new function calling itself);
2. with the update: its implementation and ``setattr(<module>, <new name>, <new name>)``, which
   installs the new function where every later ``import`` finds it;
3. the candidate solution, the task's unit tests, and a call of every test function in order
   (the first failing assertion fails the program).

Without the update (step 2 left out) the same program measures whether a solution passes on the
library as it is, which UPass needs (it passes *only* with the update).
"""

from __future__ import annotations

import re
from math import comb

from .arena import CodeTask

_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.S)


def task_prompt(task: CodeTask) -> str:
    """What the model is asked: the scenario, the problem and the signature; no documentation."""
    lines = [task.scenario, task.problem] if task.scenario else [task.problem]
    lines.append(f"Write the Python function `{task.solution_signature.rstrip(':')}` with the imports it needs. "
                 "Answer with the code in one ```python block.")
    return "\n\n".join(lines)


def extract_code(answer: str) -> str:
    """The program in a model's answer: its first fenced block, or the whole answer if none.

    A chat model wraps code in ```python fences and may talk before and after; an answer cut at
    the token limit inside a block keeps what it has.
    """
    match = _FENCE.search(answer)
    return (match.group(1) if match else answer).strip("\n")


def fence(code: str) -> str:
    """A solution as a chat model writes it (and as y⁺ is trained): one ```python block."""
    return f"```python\n{code.strip()}\n```"


def program_for(task: CodeTask, solution: str, *, with_update: bool = True, token: str | None = None) -> str:
    """The program that runs ``solution`` against ``task``'s unit tests (module docstring).

    With a ``token``, the program prints it after the last test: a solution that ends the
    program early (``sys.exit(0)``, ``unittest.main()``) exits 0 without running the tests, and
    is told apart by the missing token (:func:`ran_to_the_end`). It guards against accidents, not
    a program that reads its own source to find the token.
    """
    update = task.update
    parts = [task.imports]
    if update.imports.strip() != task.imports.strip():
        parts.append(update.imports)
    if with_update:
        parts += [update.implementation, f"setattr({update.module}, {update.new_name!r}, {update.new_name})"]
    parts += [solution, task.unit_tests, "\n".join(f"{name}()" for name in task.tests)]
    if token is not None:
        parts.append(f"print({token!r}, flush=True)")
    return "\n\n".join(parts) + "\n"


def ran_to_the_end(stdout: str, token: str) -> bool:
    """Whether the program printed ``token`` as its last line: every test ran, and passed."""
    lines = stdout.rstrip("\n").rsplit("\n", 1)
    return bool(lines) and lines[-1] == token


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator of Pass@k from n samples of which c pass (Chen et al. 2021, eq. 1).

    pass@k = 1 − C(n−c, k) / C(n, k): the chance that at least one of k samples drawn without
    replacement from the n passes. Needs k ≤ n.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 ≤ c ≤ n and 1 ≤ k ≤ n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)
