"""corsa.code: CodeUpdateArena's two layouts, test programs run in the sandbox, Pass@k, the code bench."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from corsa.code import extract_code, fence, load_arena, pass_at_k, split_tasks, program_for
from corsa.code.evaluate import run_tests, summarise
from corsa.code.programs import task_prompt
from corsa.errors import DataError
from corsa.sandbox import run_programs

FIXTURES = Path(__file__).parent / "fixtures"
UNGROUPED = FIXTURES / "arena-ungrouped.jsonl"
ARENA = Path(__file__).resolve().parents[2] / "shared" / "data" / "codeupdatearena" / "arena.jsonl"


@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (5, 0, 1, 0.0), (5, 1, 1, 0.2), (5, 5, 1, 1.0), (5, 1, 5, 1.0),
    (5, 2, 2, 1 - 3 / 10),            # 1 − C(3,2)/C(5,2)
    (10, 3, 5, 1 - 21 / 252),         # 1 − C(7,5)/C(10,5)
    (20, 1, 5, 5 / 20),               # one passing sample: k/n
])
def test_pass_at_k_against_hand_computed_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_refuses_impossible_counts():
    for n, c, k in ((5, 6, 1), (5, 1, 6), (5, 1, 0), (5, -1, 1)):
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_extract_code():
    chat = "Here is the function:\n```python\nimport math\n\ndef f(x):\n    return x\n```\nIt returns x."
    assert extract_code(chat) == "import math\n\ndef f(x):\n    return x"
    assert extract_code("```\ndef g():\n    pass\n```") == "def g():\n    pass"
    assert extract_code("```python\ndef h():\n    return 1") == "def h():\n    return 1"  # cut at the token limit
    assert extract_code("def plain():\n    return 2\n") == "def plain():\n    return 2"
    assert extract_code(fence("x = 1\n")) == "x = 1"


def test_the_final_release_layout_groups_rows_by_update():
    updates = load_arena(UNGROUPED)
    assert [len(u) for u in updates] == [3, 3]
    floor, isqrt = updates[0][0].update, updates[1][0].update
    assert (floor.module, floor.new_name) == ("math", "floor")
    assert (isqrt.function_path, isqrt.new_name) == ("math.isqrt", "int_sqrt")  # a renamed function
    assert updates[0][0].tests == ("test_cents", "test_empty")
    assert updates[0][1].function_name == "reading_down"


@pytest.mark.skipif(not ARENA.exists(), reason="../shared/data is not beside the checkout")
def test_the_grouped_file_loads_whole():
    updates = load_arena(ARENA)
    assert len(updates) == 141 and sum(len(u) for u in updates) == 577
    sin = updates[0][0]
    assert sin.update.function_path == "math.sin" and sin.update.new_name == "sin"
    renamed = [u[0].update for u in updates if u[0].update.update_type == "modify-function-name"]
    assert renamed and all(r.new_name != r.function_path.rsplit(".", 1)[1] for r in renamed)


def _rows() -> list[dict]:
    return [json.loads(line) for line in UNGROUPED.read_text().splitlines()]


@pytest.mark.parametrize(("change", "field"), [
    (lambda r: r.pop("unit_tests"), "unit_tests"),
    (lambda r: r.update(ref_solution=7), "ref_solution"),
    (lambda r: r.update(implementation="x = 1"), "implementation"),
    (lambda r: r.update(unit_tests="assert True"), "unit_tests"),
    (lambda r: r.update(function_path="floor"), "function_path"),
])
def test_a_bad_task_is_refused_naming_file_record_and_field(tmp_path, change, field):
    rows = _rows()
    change(rows[4])
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError) as err:
        load_arena(path)
    assert err.value.path == str(path) and err.value.field == field and str(err.value.record).startswith("4")


def test_a_bad_grouped_record_names_the_task_inside_it(tmp_path):
    rows = _rows()
    keys = ("prog_syn_id", "scenario", "problem", "solution_signature", "unit_tests", "prog_syn_imports", "ref_solution")
    update = {k: v for k, v in rows[0].items() if k not in keys}
    tasks = [{k: r[k] for k in keys} for r in rows[:3]]
    del tasks[1]["problem"]
    path = tmp_path / "grouped.jsonl"
    path.write_text(json.dumps({"update": update, "prog_syn_examples": tasks}) + "\n")
    with pytest.raises(DataError) as err:
        load_arena(path)
    assert err.value.field == "prog_syn_examples[1].problem"


def test_a_task_given_twice_or_a_fact_file_is_refused(tmp_path):
    rows = _rows()
    path = tmp_path / "twice.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows + rows[:1]) + "\n")
    with pytest.raises(DataError, match="appears twice"):
        load_arena(path)
    facts = tmp_path / "facts.jsonl"
    facts.write_text(json.dumps({"prompt": "The capital of France is", "target_new": "Rome"}) + "\n")
    with pytest.raises(DataError, match="not a CodeUpdateArena record"):
        load_arena(facts)


def test_the_split_is_seeded_per_update_and_independent_of_the_others():
    updates = load_arena(UNGROUPED)
    split = split_tasks(updates, seed=3)
    ids = [t.id for u in updates for t in u]
    assert sorted(split["train"] + split["held_out"]) == sorted(ids)
    assert not set(split["train"]) & set(split["held_out"])
    assert len(split["train"]) == 2  # one of each update's three tasks
    assert split == split_tasks(updates, seed=3)
    alone = split_tasks(updates[1:], seed=3)
    assert set(alone["train"]) <= set(split["train"])  # the second update's choice does not move
    assert any(split_tasks(updates, seed=s)["train"] != split["train"] for s in range(4, 12))


def test_reference_solutions_pass_with_the_update_and_fail_without_it():
    tasks = [t for u in load_arena(UNGROUPED) for t in u]
    with_update = run_programs([program_for(t, t.reference) for t in tasks], timeout_s=20)
    without = run_programs([program_for(t, t.reference, with_update=False) for t in tasks], timeout_s=20)
    assert [o.status for o in with_update] == ["passed"] * len(tasks)
    assert all(o.status == "error" for o in without)  # the old math.floor takes no digits; no math.int_sqrt


def test_a_solution_with_a_deliberate_bug_fails():
    task = load_arena(UNGROUPED)[0][0]
    buggy = task.reference.replace("digits=2", "digits=1")
    assert buggy != task.reference
    assert run_programs([program_for(task, buggy)])[0].status == "failed"


@pytest.mark.skipif(not ARENA.exists(), reason="../shared/data is not beside the checkout")
def test_a_sample_of_real_reference_solutions_pass_in_the_sandbox():
    # tasks without torch (each torch import takes seconds); 8 chosen with a fixed seed
    tasks = [t for u in load_arena(ARENA) for t in u if "torch" not in t.update.imports]
    sample = random.Random(0).sample(tasks, 8)
    outcomes = run_programs([program_for(t, t.reference) for t in sample], timeout_s=30)
    assert [o.status for o in outcomes] == ["passed"] * 8, [o.detail for o in outcomes]


def test_records_count_passes_and_passes_only_with_the_update():
    tasks = load_arena(UNGROUPED)[1]  # int_sqrt: the old library has no such function
    plain = "import math\n\ndef grid_side(n):\n    r = 0\n    while (r + 1) ** 2 <= n:\n        r += 1\n    return r\n"
    programs = [[tasks[0].reference, plain, "def grid_side(n):\n    return 0\n"]]
    (record,) = run_tests(tasks[:1], programs, timeout_s=20)
    assert record["passed"] == [True, True, False]
    assert record["upassed"] == [True, False, False]  # the hand-written root passes without the update too
    assert (record["n"], record["c"], record["u"]) == (3, 2, 1)
    record["split"] = "held_out"
    m = summarise([record], "code/held_out")
    assert m["code/held_out/pass@1"] == pytest.approx(2 / 3)
    assert m["code/held_out/upass@1"] == pytest.approx(1 / 3)
    assert m["code/held_out/pass@5"] is None  # 3 samples cannot give pass@5


def test_the_prompt_gives_the_problem_and_signature_but_not_the_update():
    task = load_arena(UNGROUPED)[0][0]
    prompt = task_prompt(task)
    assert task.problem in prompt and "def cents_down(prices: list) -> list" in prompt
    assert task.update.docstring not in prompt and "digits" not in prompt


def test_the_code_bench_runs_measures_and_resumes(tmp_path):
    """`corsa bench --data <CodeUpdateArena file>` on the tiny model: every file, every row, a resume."""
    from corsa.cli.main import main
    from corsa.testing import save_tiny_llama

    model = save_tiny_llama(tmp_path / "tiny", seed=0, max_positions=2048)
    out = tmp_path / "bench"
    argv = ["bench", "--model", str(model), "--data", str(UNGROUPED), "--methods", "lora,corsa", "--edits", "2",
            "--updates", "2", "--epochs", "1", "--sample", "2", "--max-new-tokens", "16", "--quiet", "--out", str(out),
            "--report-to", "tensorboard"]
    assert main(argv) == 0
    assert {p.name for p in (out / "tensorboard").iterdir()} == {"lora", "corsa"}  # --report-to, as for facts
    results = json.loads((out / "results.json").read_text())
    assert results["domain"] == "code" and set(results["methods"]) == {"lora", "corsa"}
    tasks = json.loads((out / "tasks.json").read_text())
    assert len(tasks["train"]) == 2 and len(tasks["held_out"]) == 4 and len(tasks["updates"]) == 2
    edits = [json.loads(line) for line in (out / "edits.jsonl").read_text().splitlines()]
    assert len(edits) == 2 and all(e["target_new"].startswith("```python\n") and e["target_old"] for e in edits)
    for method in ("lora", "corsa"):
        updates = results["methods"][method]["updates"]
        assert [u["update"] for u in updates] == [1, 2]
        assert [len(u["per_update"]) for u in updates] == [1, 2]
        for u in updates:
            for key in ("code/held_out/pass@1", "code/held_out/upass@1", "code/trained/pass@1"):
                assert 0.0 <= u["metrics"][key] <= 1.0
            assert u["metrics"]["code/held_out/pass@5"] is None  # 2 samples
        evaluation = json.loads((out / method / "update-2" / "eval.json").read_text())
        assert {r["id"] for r in evaluation["records"]} == set(tasks["train"]) | set(tasks["held_out"])
        assert all(len(r["programs"]) == 2 and len(r["status"]) == 2 for r in evaluation["records"])
    assert (out / "report.md").read_text().count("| lora |") == 2 + 2  # the table and the by-group table
    assert (out / "code-pass.png").stat().st_size > 0
    stamp = (out / "lora" / "update-2" / "eval.json").stat().st_mtime_ns
    assert main(argv) == 0  # resumed: nothing trained or evaluated again
    assert (out / "lora" / "update-2" / "eval.json").stat().st_mtime_ns == stamp
    changed = [a if a != "2" or argv[i - 1] != "--sample" else "3" for i, a in enumerate(argv)]
    assert main(changed) == 2  # other settings on the same folder: refused, not mixed

    # corsa eval on the same file, with the bench's last adapter and its split
    metrics = tmp_path / "metrics.json"
    assert main(["eval", "--model", str(model), "--adapter", str(out / "corsa" / "update-2"), "--edits", str(UNGROUPED),
                 "--code-split", str(out / "tasks.json"), "--sample", "2", "--max-new-tokens", "16", "--quiet",
                 "--out", str(metrics)]) == 0
    measured = json.loads(metrics.read_text())
    assert measured["domain"] == "code" and measured["n_tasks"] == 6
    assert measured["metrics"]["code/trained/tasks"] == 2 and measured["metrics"]["code/held_out/tasks"] == 4
    assert measured["base"]["metrics"]["code/held_out/tasks"] == 4  # the unedited model beside it
    assert all(len(r["programs"]) == 2 for r in measured["records"])


# the flags of `corsa bench` that the code domain refuses (each by name, below); every other one
# works for it as for facts: the training options through the Editor, the rest through the harness
CODE_REFUSES = {"--skip-invalid", "--mmlu", "--mmlu-file", "--mmlu-seed", "--sample-seed", "--scope", "--earlier-sample"}
CODE_HONOURS = {"--config", "--data", "--device", "--edits", "--help", "--method", "--methods", "--model", "--out",
                "--preset", "--quiet", "--report-to", "--seed", "--set", "--updates", "--sample", "--temperature",
                "--eval-batch-size", "--max-new-tokens"}


def test_every_flag_of_the_bench_is_honoured_or_refused_for_api_updates():
    import dataclasses

    from corsa.cli.main import build_parser
    from corsa.config import EditConfig

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    flags = {o for a in sub.choices["bench"]._actions for o in a.option_strings if o.startswith("--")}
    training = {f"--{p}{f.name.replace('_', '-')}" for f in dataclasses.fields(EditConfig) for p in ("", "no-")}
    unclassified = flags - CODE_REFUSES - CODE_HONOURS - (training - {"--scope"})
    assert unclassified == set()  # a new flag of `corsa bench` says here what it does on API updates


@pytest.mark.parametrize("flags, named", [
    (["--skip-invalid"], "--skip-invalid"), (["--mmlu", "4"], "--mmlu"), (["--mmlu-file", "x.jsonl"], "--mmlu-file"),
    (["--mmlu-seed", "3"], "--mmlu-seed"), (["--sample-seed", "3"], "--sample-seed"), (["--scope", "subject"], "--scope"),
    (["--earlier-sample", "5"], "--earlier-sample"),
    (["--set", "corsa.scope=subject"], "--scope"), (["--methods", "lora,rome"], "rome")])
def test_the_code_bench_refuses_by_name_each_flag_it_cannot_honour(tmp_path, capsys, flags, named):
    """Every flag of `corsa bench` works for API updates (--report-to, --device, training and sampling
    options: the test above) or is refused by name before any model loads."""
    from corsa.cli.main import main

    argv = ["bench", "--model", str(tmp_path / "no-model"), "--data", str(UNGROUPED), "--edits", "2", "--updates", "2",
            "--out", str(tmp_path / "out"), "--quiet", *flags]
    assert main(argv) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, named", [
    (["--skip-invalid"], "--skip-invalid"), (["--scope", "all"], "--scope"), (["--generator", "vllm"], "--generator"),
    (["--vllm-gpu-memory", "0.5"], "--vllm-gpu-memory"), (["--mmlu", "4"], "--mmlu"),
    (["--mmlu-file", "x.jsonl"], "--mmlu-file")])
def test_eval_on_api_updates_refuses_by_name_each_flag_it_cannot_honour(tmp_path, capsys, flags, named):
    from corsa.cli.main import main

    argv = ["eval", "--model", str(tmp_path / "no-model"), "--edits", str(UNGROUPED), "--out", str(tmp_path / "m.json"),
            "--quiet", *flags]
    assert main(argv) == 2
    assert named in capsys.readouterr().err


def test_eval_on_facts_refuses_a_code_split(tmp_path, capsys):
    from corsa.cli import SAMPLE
    from corsa.cli.main import main

    argv = ["eval", "--edits", str(SAMPLE), "--out", str(tmp_path / "m.json"), "--code-split", "tasks.json"]
    assert main(argv) == 2
    assert "--code-split" in capsys.readouterr().err


def test_the_one_filler_gives_a_program_its_unedited_program_as_y_minus(tiny):
    from corsa import old_answers
    from corsa.loaders import load_edits
    from corsa.prompts import PromptFormat
    from corsa.records import Edit

    model, tokenizer = tiny
    fmt = PromptFormat(tokenizer, "chat")
    code = load_edits(UNGROUPED)[:2]
    fact = Edit(id="f", prompt="The capital of France is", target_new="Rome")
    filled = old_answers.fill(model, fmt, [code[0], fact, code[1]], max_new_tokens=4)
    for e in (filled[0], filled[2]):
        assert e.target_old.startswith("```python\n") and e.target_old.endswith("\n```")
        assert e.target_old != e.target_new
    assert not filled[1].target_old.startswith("```")  # a fact keeps the short-answer rule


def test_a_solution_that_ends_the_program_before_the_tests_does_not_pass():
    task = load_arena(UNGROUPED)[0][0]
    cheats = [task.reference + "\nimport sys\nsys.exit(0)\n",
              task.reference + "\nimport unittest\nunittest.main()\n",
              "import os\nos._exit(0)\n"]
    (record,) = run_tests([task], [[task.reference, *cheats]], timeout_s=20)
    assert record["passed"] == [True, False, False, False]
    assert record["status"][1:] == ["failed"] * 3


def test_upass_needs_a_real_failure_without_the_update(monkeypatch):
    import corsa.code.evaluate as ev
    from corsa.sandbox import Outcome

    task = load_arena(UNGROUPED)[1][0]
    real = ev.run_programs
    calls = []

    def flaky(sources, **kw):  # the run without the update times out: that proves nothing
        calls.append(len(sources))
        if len(calls) == 2:
            return [Outcome("timeout", -9, "", "", 10.0, "killed at the time limit") for _ in sources]
        return real(sources, **kw)

    monkeypatch.setattr(ev, "run_programs", flaky)
    (record,) = run_tests([task], [[task.reference]], timeout_s=20)
    assert record["passed"] == [True] and record["upassed"] == [False]


def test_programs_are_drawn_as_the_command_says_else_as_code_needs():
    from corsa.code.evaluate import NEW_TOKENS, SAMPLES, TEMPERATURE, drawing
    from corsa.config import EvalSettings

    assert drawing(EvalSettings(), tokens_given=False) == {"samples": SAMPLES, "temperature": TEMPERATURE,
                                                           "max_new_tokens": NEW_TOKENS}
    # a given --max-new-tokens counts even when it equals the facts' default
    given = drawing(EvalSettings(sample=3, temperature=0.5, max_new_tokens=16), tokens_given=True)
    assert given == {"samples": 3, "temperature": 0.5, "max_new_tokens": 16}
