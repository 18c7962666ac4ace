"""`corsa bench` end to end on the tiny model, through the command line: files, keys, resume, reruns."""

import json
import shutil

import pytest

from corsa import ConfigError
from corsa.comparison import TIMING_KEYS, BenchSpec, parse_sets, select
from corsa.cli import main
from corsa.records import Edit, Probe
from corsa.testing import FAST as TRAIN_FAST, flags

METHODS = ["lora", "corsa"]
FAST = [*flags(TRAIN_FAST), "--warmup-steps", "0", "--max-new-tokens", "6"]
FRACTIONS = ["reliability", "generality", "locality", "locality_tf", "efficacy"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from corsa.testing import save_tiny_llama

    root = tmp_path_factory.mktemp("bench")
    model = save_tiny_llama(root / "tiny", seed=0)
    rows = []
    for i in range(8):
        row = {"id": f"e{i}", "prompt": f"The capital of country {i} is", "target_new": f"City{i}",
               "target_old": f"Town{i}", "paraphrases": [f"Country {i} has its capital in", f"Capital of {i}:"],
               "locality": [{"prompt": f"The colour of object {i} is", "answer": "red"}]}
        if i < 4:  # two two-edit "cases" sharing a multi-hop question
            row["portability"] = [{"prompt": f"Where is the head office of case {i // 2}?", "answer": f"City{i}"}]
        rows.append(row)
    data = root / "edits.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    header = {"question": "question", "answer_a": "A", "answer_b": "B", "answer_c": "C", "answer_d": "D",
              "correct_answer": "answer", "topic": "topic"}
    questions = [{"question": f"What is {i} + 1?", "answer_a": str(i + 1), "answer_b": str(i), "answer_c": "x",
                  "answer_d": "y", "correct_answer": "A", "topic": "arithmetic"} for i in range(6)]
    mmlu = root / "mmlu.jsonl"
    mmlu.write_text("".join(json.dumps(r) + "\n" for r in [header] + questions))
    return root, model, data, mmlu


def argv(setup, out, *extra):
    root, model, data, mmlu = setup
    return ["bench", "--model", str(model), "--data", str(data), "--methods", ",".join(METHODS), "--edits", "4",
            "--updates", "2", "--seed", "0", "--out", str(out), "--mmlu", "3", "--mmlu-file", str(mmlu),
            *FAST, *extra]


@pytest.fixture(scope="module")
def first(setup):
    out = setup[0] / "run"
    assert main(argv(setup, out)) == 0
    return out, json.loads((out / "results.json").read_text())


def without_timing(obj):
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items() if k not in TIMING_KEYS and k != "versions"}
    if isinstance(obj, list):
        return [without_timing(v) for v in obj]
    return obj


def test_every_file_and_key(first):
    out, r = first
    for name in ("results.json", "results.csv", "report.md", "bench.json", "edits.jsonl", "base.json",
                 "forgetting.png", "margins.png", "stream.png", *(f"retention-{m}.png" for m in METHODS)):
        assert (out / name).exists(), name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.rglob("*.tmp")), "temporary files left behind"
    assert {"model", "data", "n_edits", "n_updates", "seed", "base", "methods", "protocol"} <= set(r)
    assert (r["n_edits"], r["n_updates"], r["seed"]) == (4, 2, 0)
    assert set(r["base"]["final"]) >= set(FRACTIONS) | {"margin_mean"}
    assert r["base"]["final"]["locality"] == 1.0
    assert r["base"]["mmlu"]["n"] == 3
    assert list(r["methods"]) == METHODS
    for name, m in r["methods"].items():
        R = m["retention"]
        assert [len(row) for row in R] == [1, 2]
        assert all(0 <= v <= 1 for row in R for v in row)
        for key in ("update_efficacy", "retention_final", "forgetting", "train_seconds", "peak_rss_mb"):
            assert m[key] is not None, (name, key)
        assert m["update_efficacy"] == pytest.approx((R[0][0] + R[1][1]) / 2)
        assert m["retention_final"] == pytest.approx(R[1][0])
        assert m["forgetting"] == pytest.approx(R[0][0] - R[1][0])
        from corsa.comparison.results import MethodResults
        from corsa.report import stream_series

        series = stream_series(MethodResults.of(m), r["update_sizes"])  # stream.png's points
        assert series["held"] == [2, 4] and series["retention"] == [None, pytest.approx(R[1][0])]
        assert series["train_seconds"] == [u["train"]["seconds"] for u in m["per_update"]]
        T = m["retention_teacher_forced"]
        assert [len(row) for row in T] == [1, 2]
        assert m["teacher_forced"]["forgetting"] == pytest.approx(T[0][0] - T[1][0])
        assert m["teacher_forced"]["retention_final"] == pytest.approx(T[1][0])
        lost = m["lost_edits"]  # the first update's edits, by their answer after the second
        assert lost["edits"] == r["update_sizes"][0]
        assert lost["kept"] == pytest.approx(R[1][0] * lost["edits"])
        assert lost["lost"] == lost["to_old_answer"] + lost["to_another_edit"] + lost["elsewhere"]
        assert lost["kept"] + lost["never_took"] + lost["lost"] == lost["edits"]
        answers = {a["id"]: a for a in m["answers"]}  # what each edit answers after each update
        first_ids = r["update_edit_ids"][0]
        assert [len(answers[i]["after"]) for i in first_ids] == [2] * len(first_ids)
        assert all(len(answers[i]["after"]) == 1 for i in r["update_edit_ids"][1])
        after_second = json.loads((out / name / "update-2" / "eval.json").read_text())["records"]
        assert [answers[x["id"]]["after"][-1] for x in after_second] == [x["answer"] for x in after_second]
        from corsa.metrics import contains
        took_first = json.loads((out / name / "update-1" / "eval.json").read_text())["records"]
        assert lost["never_took"] == sum(not contains(x["answer"], x["target_new"]) and
                                         not contains(answers[x["id"]]["after"][-1], x["target_new"])
                                         for x in took_first)
        for key in FRACTIONS:
            assert 0.0 <= m["final"][key] <= 1.0, (name, key)
        assert isinstance(m["final"]["margin_mean"], float)
        assert 0.0 <= m["final"]["portability"] <= 1.0 and 0.0 <= m["final"]["mmlu_accuracy"] <= 1.0
        assert m["train_seconds"] > 0 and m["peak_rss_mb"] > 0
        assert m["config"]["method"] == name and m["config"]["seed"] == 0
        for k in (1, 2):
            folder = out / name / f"update-{k}"
            assert (folder / "adapter" / "adapter_model.safetensors").exists()
            assert json.loads((folder / "eval.json").read_text())["update"] == k
    lora, corsa = r["methods"]["lora"]["forgetting"], r["methods"]["corsa"]["forgetting"]
    want = None if not lora or lora <= 0 else 1 - corsa / lora  # corsa against lora, from their own matrices
    assert r["methods"]["corsa"]["relative_forgetting_reduction"] == (pytest.approx(want) if want is not None else None)
    assert r["final_keys"]["reliability"] == "generated/reliability"
    assert r["final_keys"]["efficacy"] == "teacher_forced/efficacy"
    # the two updates hold the chosen edits, whole cases together
    edits = [json.loads(line) for line in (out / "edits.jsonl").read_text().splitlines()]
    assert [e["id"] for e in edits] == [i for u in r["update_edit_ids"] for i in u]
    # csv: one row per method × update × metric
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0] == "method,update,metric,protocol,value"
    assert any(row.startswith("corsa,2,retention/update-1,generated,") for row in rows)
    assert any(row.startswith("lora,1,teacher_forced/efficacy,teacher_forced,") for row in rows)
    assert any(row.startswith("corsa,2,retention_teacher_forced/update-1,teacher_forced,") for row in rows)
    assert any(row.startswith("corsa,2,summary_teacher_forced/forgetting,teacher_forced,") for row in rows)
    n_metrics = len(r["methods"]["lora"]["metrics"])
    assert len(rows) - 1 >= len(METHODS) * 2 * (n_metrics - 1)
    report = (out / "report.md").read_text()
    assert ("| method | reliability | generality | locality | locality (tf) | subject loc. | hijack | mention | "
            "subject KL | efficacy | margin |") in report
    assert "| lora |" in report and "| corsa |" in report and "| base (unedited) |" in report
    assert "retention-corsa.png" in report and "greedy" in report
    assert "forgetting (tf)" in report and "Teacher-forced (efficacy, %):" in report
    assert "## Where the earlier updates' edits went" in report and "never took" in report
    assert "## What each edit answers" in report and "| edit | prompt | y⁺ | y⁻ | unedited | after U1 | after U2 |" in report
    assert set(r["base"]["answers"]) == {e["id"] for e in edits}


def test_rerun_skips_every_finished_pair(setup, first, monkeypatch, capsys):
    out, before = first

    def refuse(*a, **k):
        raise AssertionError("a finished pair was trained or evaluated again")

    monkeypatch.setattr("corsa.api.train_update", refuse)
    monkeypatch.setattr("corsa.comparison.facts.evaluate", refuse)
    assert main(argv(setup, out)) == 0
    after = json.loads((out / "results.json").read_text())
    assert without_timing(after) == without_timing(before)
    assert "report:" in capsys.readouterr().out


def test_a_bench_folder_is_corsas_by_the_files_its_bench_json_lists(setup, first, tmp_path, monkeypatch, capsys):
    """A report.md edited by hand is the user's: a rerun is refused and leaves it as it is (it was overwritten).
    A folder of an earlier version (bench.json without run_id or files) still resumes, and is listed from then on."""
    out, before = first
    bench = json.loads((out / "bench.json").read_text())
    assert bench["run_id"] and bench["writing"] is False
    assert set(bench["files"]) >= {"results.json", "results.csv", "report.md", "edits.jsonl", "base.json"}
    copy = tmp_path / "edited"
    shutil.copytree(out, copy)
    (copy / "report.md").write_text("# my notes on the bench\n")
    assert main(argv(setup, copy)) == 2
    assert "report.md" in capsys.readouterr().err
    assert (copy / "report.md").read_text() == "# my notes on the bench\n"

    def refuse(*a, **k):
        raise AssertionError("a finished pair was trained or evaluated again")

    older = tmp_path / "older"
    shutil.copytree(out, older)
    (older / "bench.json").write_text(json.dumps({k: v for k, v in bench.items()
                                                  if k not in ("run_id", "files", "writing")}))
    monkeypatch.setattr("corsa.api.train_update", refuse)
    monkeypatch.setattr("corsa.comparison.facts.evaluate", refuse)
    assert main(argv(setup, older)) == 0
    adopted = json.loads((older / "bench.json").read_text())
    assert adopted["run_id"] and set(adopted["files"]) == set(bench["files"])


def test_resume_trains_only_the_missing_update_and_matches(setup, first, tmp_path, monkeypatch):
    out, before = first
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "corsa" / "update-2")
    import corsa.api

    calls = []
    real = corsa.api.train_update
    monkeypatch.setattr(corsa.api, "train_update", lambda *a, **k: calls.append(k["update_index"]) or real(*a, **k))
    assert main(argv(setup, copy)) == 0
    assert calls == [1]  # the second update (0-based index 1) of corsa, nothing else
    after = json.loads((copy / "results.json").read_text())
    assert without_timing(after["methods"]) == without_timing(before["methods"])
    run = json.loads((copy / "corsa" / "update-2" / "run.json").read_text())
    assert [u["index"] for u in run["updates"]] == [1, 2]


def test_a_fresh_rerun_gives_the_same_results(setup, first, tmp_path):
    _, before = first
    assert main(argv(setup, tmp_path / "again")) == 0
    after = json.loads((tmp_path / "again" / "results.json").read_text())
    assert without_timing(after) == without_timing(before)


def test_changed_settings_are_refused(setup, first, capsys):
    out, _ = first
    assert main(argv(setup, out, "--lr", "2e-2")) == 2
    err = capsys.readouterr().err
    assert "training options for lora" in err and "lr: saved 0.01, now 0.02" in err and "Traceback" not in err
    assert main([a if a != "4" else "2" for a in argv(setup, out)]) == 2
    assert "n_edits: saved 4, now 2" in capsys.readouterr().err


def test_one_update_has_no_retention_or_forgetting_and_old_answers_are_filled(setup, tmp_path):
    data = tmp_path / "no-old.jsonl"  # a user's own edits: no y⁻
    data.write_text("".join(json.dumps({"prompt": f"My cat number {i} is called", "target_new": f"Tom{i}"}) + "\n"
                            for i in range(3)))
    args = argv(setup, tmp_path / "one")
    for flag, value in (("--updates", "1"), ("--methods", "lora"), ("--edits", "2"), ("--data", str(data))):
        args[args.index(flag) + 1] = value
    assert main(args) == 0
    r = json.loads((tmp_path / "one" / "results.json").read_text())
    m = r["methods"]["lora"]
    assert len(m["retention"]) == 1 and m["update_efficacy"] == m["retention"][0][0]
    assert m["retention_final"] is None and m["forgetting"] is None
    assert m["final"]["generality"] is None and m["final"]["locality"] is None  # nothing to measure
    assert "– |" in (tmp_path / "one" / "report.md").read_text()
    edits = [json.loads(line) for line in (tmp_path / "one" / "edits.jsonl").read_text().splitlines()]
    base = json.loads((tmp_path / "one" / "base.json").read_text())
    # y⁻ is filled from the unedited model (method.md §4): the tiny model's greedy reply is empty, so
    # y⁻ is a span of its completion of the prompt's own words, else the end of turn: never empty, never y⁺
    assert [rec["answer"] for rec in base["records"]] == ["", ""]
    assert all(e["target_old"] and e["target_old"] != e["target_new"] for e in edits)


def test_eval_command_on_a_bench_adapter(setup, first, tmp_path, capsys):
    out, results = first
    _, model, data, mmlu = setup
    target = tmp_path / "metrics.json"
    assert main(["eval", "--model", str(model), "--adapter", str(out / "lora" / "update-2"), "--edits",
                 str(out / "edits.jsonl"), "--out", str(target), "--max-new-tokens", "6", "--quiet",
                 "--mmlu", "3", "--mmlu-file", str(mmlu)]) == 0
    m = json.loads(target.read_text())
    assert m["n_edits"] == 4 and len(m["records"]) == 4
    assert m["metrics"] == pytest.approx(results["methods"]["lora"]["metrics"], abs=1e-4)
    assert m["base"]["metrics"] == pytest.approx(results["base"]["metrics"], abs=1e-4)
    assert "teacher_forced/mmlu_accuracy" in m["metrics"]
    printed = capsys.readouterr().out
    assert "reliability" in printed and "teacher-forced" in printed and str(target) in printed


@pytest.mark.parametrize("extra, message", [
    (["--edits", "5"], "equal size"),
    (["--methods", "lora,nope"], "unknown method"),
    (["--set", "corsa.rho"], "METHOD.OPTION=VALUE"),
    (["--set", "sam.rho=0.1"], "not among --methods"),
    (["--set", "lora.rho=0.1"], "does not use SAM"),
    (["--set", "corsa.template=raw"], "same for every method"),
])
def test_invalid_commands_fail_before_any_work(setup, tmp_path, capsys, extra, message):
    assert main(argv(setup, tmp_path / "bad", *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad" / "bench.json").exists()


def test_method_terms_apply_only_where_used_and_sets_override():
    spec = BenchSpec(model="m", data="d", out="o", methods=("lora", "sam", "corsa"), n_edits=4, n_updates=2,
                     train={"rho": 0.2, "lr": 1e-3}, sets=parse_sets(["corsa.rho=0.1", "corsa.combine=pcgrad-release"]))
    assert spec.method_config("lora").sam_rho == 0.0 and spec.method_config("lora").lr == 1e-3
    assert spec.method_config("sam").sam_rho == 0.2
    corsa = spec.method_config("corsa")
    assert corsa.sam_rho == 0.1 and corsa.combiner == "pcgrad-release" and corsa.seed == 0
    assert parse_sets(["corsa.early-stop=true", "lora.target_modules=q_proj,v_proj"]) == {
        "corsa": {"early_stop": True}, "lora": {"target_modules": ("q_proj", "v_proj")}}
    with pytest.raises(ConfigError, match="unknown option"):
        parse_sets(["corsa.rhoo=1"])
    with pytest.raises(ConfigError, match="not a valid float"):
        parse_sets(["corsa.rho=big"])
    # "none" is a value of replay and negatives (switch them off), not "the row's default"
    sets = parse_sets(["corsa-lifelong.replay=none", "corsa-lifelong.negatives=none", "corsa.rho=null"])
    assert sets == {"corsa-lifelong": {"replay": "none", "negatives": ("none",)}, "corsa": {"rho": None}}
    life = BenchSpec(model="m", data="d", out="o", methods=("corsa-lifelong", "corsa"), n_edits=4, n_updates=2,
                     sets=sets).method_config("corsa-lifelong")
    assert life.value("replay") == "none" and life.value("negatives") == ()


def test_selection_is_seeded_and_keeps_cases_whole():
    case = lambda c: (Probe(f"question of case {c}", "x"),)
    edits = [Edit(id=f"c{i // 2}-{i % 2}", prompt=f"p{i}", target_new="a", target_old="b",
                  portability=case(i // 2)) for i in range(6)] + \
            [Edit(id=f"s{i}", prompt=f"q{i}", target_new="a", target_old="b") for i in range(4)]
    chosen = select(edits, 6, seed=3)
    assert chosen == select(edits, 6, seed=3) and len(chosen) == 6
    for e in chosen:
        if e.id.startswith("c"):
            partner = e.id[:-1] + ("1" if e.id.endswith("0") else "0")
            assert partner in {x.id for x in chosen}
    with pytest.raises(ConfigError, match="only 10"):
        select(edits, 11, seed=0)


def test_demo_is_the_bench_on_the_bundled_sample(monkeypatch):
    import corsa.comparison
    from corsa.cli import SAMPLE

    seen = {}

    def capture(spec):
        seen["spec"] = spec
        raise ConfigError("stop here")

    monkeypatch.setattr(corsa.comparison, "run_bench", capture)
    assert main(["demo", "--quiet"]) == 2
    spec = seen["spec"]
    assert spec.methods == ("lora", "corsa", "corsa-lifelong") and spec.n_updates == 2 and spec.n_edits == 16
    assert spec.data == str(SAMPLE) and spec.model == "smollm2-135m"
    assert spec.train == {}  # the defaults themselves edit the bundled model: no demo-only settings


def test_lifelong_replays_earlier_updates_and_resumes_to_the_same_adapter(setup, tmp_path):
    import torch
    from safetensors.torch import load_file

    def run(out):
        args = argv(setup, out, "--methods", "corsa-lifelong")
        assert main(args) == 0
        return out / "corsa-lifelong"

    whole = run(tmp_path / "whole")
    first_ids = json.loads((whole / "update-1" / "eval.json").read_text())["edit_ids"]
    second = json.loads((whole / "update-2" / "run.json").read_text())["updates"][-1]
    assert second["replayed_ids"] == first_ids  # the earlier update's edits, from the adapter's record
    # killed after update 1: the rerun replays from the saved adapter and ends where the whole run did
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "whole", part, ignore=shutil.ignore_patterns("update-2", "results.*", "report.md",
                                                                              "*.png"))
    resumed = run(part)
    a = load_file(str(whole / "update-2" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(resumed / "update-2" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_earlier_sample_measures_the_earlier_edits_on_a_seeded_sample_and_resumes_alike(setup, tmp_path):
    """--earlier-sample on 4 updates of 2: after update 3 the 4 earlier edits are sampled, the same share of
    each earlier update; update 3's own are all measured, and the last update measures all."""
    root, model, data, _ = setup
    out = tmp_path / "sampled"
    cmd = ["bench", "--model", str(model), "--data", str(data), "--methods", "lora", "--edits", "8", "--updates", "4",
           "--seed", "1", "--out", str(out), "--earlier-sample", "2", *FAST]
    assert main(cmd) == 0
    evals = [json.loads((out / "lora" / f"update-{k}" / "eval.json").read_text()) for k in range(1, 5)]
    updates = json.loads((out / "results.json").read_text())["update_edit_ids"]
    assert [e["sample"] for e in evals[:2]] == [None, None]  # 2 earlier edits: no fewer to sample
    assert evals[3]["sample"] is None and [r["id"] for r in evals[3]["records"]] == sum(updates, [])
    third = evals[2]
    assert third["sample"] == {"earlier": 4, "sampled": 2, "seed": 1, "update": 3}
    ids = [r["id"] for r in third["records"]]
    assert [u["counts"]["edits"] for u in third["per_update"]] == [1, 1, 2]  # one of each earlier update
    assert ids[0] in updates[0] and ids[1] in updates[1] and ids[2:] == updates[2]
    results = json.loads((out / "results.json").read_text())
    assert results["earlier_sample"] == 2 and len(results["methods"]["lora"]["retention"]) == 4
    # an earlier edit outside update 3's sample has no answer there
    row = next(a for a in results["methods"]["lora"]["answers"] if a["id"] == updates[0][0])
    assert len(row["after"]) == 4 and (row["after"][2] is None) == (updates[0][0] not in ids)
    # resumed from update 2, the same sample and the same numbers
    shutil.rmtree(out / "lora" / "update-3")
    shutil.rmtree(out / "lora" / "update-4")
    assert main(cmd) == 0
    again = json.loads((out / "results.json").read_text())
    assert without_timing(again["methods"]) == without_timing(results["methods"])
    # the sample size is a setting: another is refused on the same folder
    assert main(cmd[:-len(FAST) - 2] + ["--earlier-sample", "3", *FAST]) == 2


@pytest.mark.parametrize("n, shares", [(1, [1, 1, 1, 1, 1]), (7, [2, 2, 1, 1, 1]), (12, [3, 3, 2, 2, 2])])
def test_a_sample_smaller_than_the_earlier_updates_still_measures_each_of_them(n, shares):
    """10 updates of 4, after update 6: n split over the 5 earlier updates, at least one each (so R[6][j]
    exists for every j), the remainder to updates drawn with the seed."""
    from corsa.comparison.facts import Facts

    spec = BenchSpec(model="m", data="d", out="o", methods=("lora",), n_edits=40, n_updates=10, earlier_sample=n)
    facts = Facts(spec)
    facts.updates = [[Edit(f"u{j}e{i}", f"Prompt {j} {i} is", "Y") for i in range(4)] for j in range(10)]
    per_update, sample = facts.measured_edits(6)
    assert sorted(map(len, per_update[:5]), reverse=True) == shares and len(per_update[5]) == 4
    assert sample == {"earlier": 20, "sampled": sum(shares), "seed": 0, "update": 6}
    assert facts.measured_edits(6) == (per_update, sample)          # seeded
    assert facts.measured_edits(10)[1] is None                       # the last update measures every edit
