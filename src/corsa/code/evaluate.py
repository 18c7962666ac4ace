"""Measuring API-update edits by running what the model writes (CodeUpdateArena's protocol).

For each task the model gets the problem and the solution's signature (never the update's
documentation), and ``samples`` answers are drawn at ``temperature``. Each answer's code
(:func:`corsa.code.programs.extract_code`) runs against the task's unit tests in the sandbox
(:mod:`corsa.sandbox`), with the update installed; an answer that passes runs once more without
it. Per task, c of n samples pass and u of n pass *only* with the update; then

- ``code/pass@k`` = mean over tasks of the unbiased pass@k (Chen et al. 2021) from (n, c);
- ``code/upass@k`` = the same from (n, u): solutions that pass because they use the update
  (CodeUpdateArena's UPass), not because the task could be solved without it.

Both are given over the held-out tasks (``held_out/…``, the update's efficacy: tasks never
trained on) and over the trained tasks (``trained/…``), so memorised solutions and a learnt
update are told apart. The sampled answers come from one seeded generator, so a rerun draws
the same programs.
"""

from __future__ import annotations

import secrets
import time

import torch
from tqdm.auto import tqdm

from ..unedited import adapter_off
from ..generate import generate
from ..sandbox import run_programs
from .arena import CodeTask
from .programs import extract_code, pass_at_k, program_for, ran_to_the_end, task_prompt

# how programs are drawn when the command does not say (--sample, --temperature, --max-new-tokens)
SAMPLES, TEMPERATURE, NEW_TOKENS = 5, 0.8, 320
TIMEOUT_S = 10.0  # per program, wall clock


def drawing(settings, tokens_given: bool) -> dict:
    """How programs are drawn (`corsa bench` and `corsa eval` alike): `samples`, `temperature` and
    `max_new_tokens` from the evaluation settings where the command gives them, else the defaults above
    (a fact's 16 tokens are no program). tokens_given: whether --max-new-tokens was given."""
    return {"samples": settings.sample or SAMPLES,
            "temperature": settings.temperature if settings.sample else TEMPERATURE,
            "max_new_tokens": settings.max_new_tokens if tokens_given else NEW_TOKENS}


KS = (1, 5)


def sample_programs(model, fmt, tasks: list[CodeTask], *, samples: int, temperature: float, max_new_tokens: int,
                    batch_size: int, seed: int, adapter: bool = True, progress: bool = False) -> list[list[str]]:
    """``samples`` programs per task (greedy when ``samples`` is 0: one program), seeded."""
    prompts = [task_prompt(t) for t in tasks]
    torch.manual_seed(seed)
    with adapter_off(model, not adapter), tqdm(total=len(prompts), desc="code · writing programs", unit="task",
                                               disable=not progress, leave=False) as bar:
        answers = generate(model, fmt, prompts, max_new_tokens, batch_size, bar, num_samples=samples,
                           temperature=temperature)
    return [[extract_code(a) for a in (per if samples else [per])] for per in answers]


def run_tests(tasks: list[CodeTask], programs: list[list[str]], *, timeout_s: float, workers: int | None = None,
              progress: bool = False) -> list[dict]:
    """Each task's record: its programs' outcomes with the update, and without it where they passed.

    A program passes when it exits 0 *and* prints the run's random token after the last test
    (:func:`corsa.code.programs.ran_to_the_end`), so one that exits early is not counted. It
    passes *only* with the update (UPass) when the run without the update failed or broke
    (``failed``, ``error``): a timeout or a sandbox fault there proves nothing.
    """
    token = f"corsa-tests-done-{secrets.token_hex(8)}"
    jobs = [(i, s) for i, per in enumerate(programs) for s in range(len(per))]
    with tqdm(total=2, desc="code · running programs", disable=not progress, leave=False) as bar:
        with_update = run_programs([program_for(tasks[i], programs[i][s], token=token) for i, s in jobs],
                                   timeout_s=timeout_s, workers=workers)
        bar.update(1)
        ok = [o.passed and ran_to_the_end(o.stdout, token) for o in with_update]
        passing = [j for j, good in enumerate(ok) if good]
        without = run_programs([program_for(tasks[jobs[j][0]], programs[jobs[j][0]][jobs[j][1]], with_update=False,
                                            token=token) for j in passing], timeout_s=timeout_s, workers=workers)
        bar.update(1)
    only_with = {j: o.status in ("failed", "error") for j, o in zip(passing, without)}
    records = [{"id": t.id, "update": t.update.id, "programs": programs[i], "status": [], "detail": [],
                "passed": [], "upassed": []} for i, t in enumerate(tasks)]
    for j, ((i, _s), outcome) in enumerate(zip(jobs, with_update)):
        rec = records[i]
        status = outcome.status if ok[j] or outcome.status != "passed" else "failed"
        rec["status"].append(status)
        rec["detail"].append(outcome.detail[:200] if status == outcome.status else "ended before its tests had run")
        rec["passed"].append(ok[j])
        rec["upassed"].append(ok[j] and only_with.get(j, False))
    for rec in records:
        n = len(rec["passed"])
        rec["n"], rec["c"], rec["u"] = n, sum(rec["passed"]), sum(rec["upassed"])
    return records


def summarise(records: list[dict], prefix: str) -> dict:
    """``{prefix}/pass@k`` and ``{prefix}/upass@k`` (k in :data:`KS`, where k ≤ n) over the records."""
    out = {}
    for k in KS:
        usable = [r for r in records if r["n"] >= k]
        for name, key in (("pass", "c"), ("upass", "u")):
            out[f"{prefix}/{name}@{k}"] = (sum(pass_at_k(r["n"], r[key], k) for r in usable) / len(usable)
                                           if usable else None)
    out[f"{prefix}/tasks"] = len(records)
    return out


def evaluate_code(model, fmt, tasks: list[CodeTask], split: dict[str, list[str]], *, samples: int = 5,
                  temperature: float = 0.8, max_new_tokens: int = 320, batch_size: int = 8, seed: int = 0,
                  timeout_s: float = 10.0, adapter: bool = True, progress: bool = False) -> dict:
    """Pass@k and UPass@k of ``tasks``, held-out and trained apart (module docstring)."""
    started = time.time()
    programs = sample_programs(model, fmt, tasks, samples=samples, temperature=temperature,
                               max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, adapter=adapter,
                               progress=progress)
    generated = time.time()
    records = run_tests(tasks, programs, timeout_s=timeout_s, progress=progress)
    held = set(split["held_out"])
    for rec in records:
        rec["split"] = "held_out" if rec["id"] in held else "trained"
    metrics = {**summarise([r for r in records if r["split"] == "held_out"], "code/held_out"),
               **summarise([r for r in records if r["split"] == "trained"], "code/trained")}
    return {"metrics": metrics, "records": records,
            "protocol": {"samples": samples, "temperature": temperature, "max_new_tokens": max_new_tokens,
                         "seed": seed, "timeout_s": timeout_s, "ks": list(KS)},
            "seconds": {"generation": round(generated - started, 2), "tests": round(time.time() - generated, 2)}}
