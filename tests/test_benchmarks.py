"""benchmarks/: the straightforward yardstick computes the engine's step, and the quick run works."""

import json
import sys
from pathlib import Path

import pytest
import torch

from corsa import Editor
from corsa.step import compute_reference, corsa_step, trainable_parameters
from corsa.prompts import collate, collate_shared, encode_edits
from corsa.scoring import score, score_shared, shared_prefix

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import run_benchmark  # noqa: E402
from straightforward import straightforward_step  # noqa: E402


def step_gradient(step, *args) -> torch.Tensor:
    step(*args)
    return torch.cat([p.grad.reshape(-1) for p in args[1]])


@pytest.mark.parametrize("method", ["lora", "sam", "dpo", "corsa"])
def test_straightforward_step_has_the_engines_gradient(method, tiny, toy_edits):
    editor = Editor(tiny, method=method, rho=0.5 if method in ("sam", "corsa") else None, progress=False)
    params = trainable_parameters(editor.model)
    with torch.no_grad():  # B = 0 at creation: move it so every LoRA parameter has a gradient
        for p in params:
            p.add_(torch.randn_like(p) * 0.05)
    enc = encode_edits(editor.fmt, toy_edits, None, need_rejected=True)
    ref = compute_reference(editor.model, editor.fmt, enc, editor.config, 8)
    pad, group = editor.tokenizer.pad_token_id, [[0, 1, 2, 3], [4, 5]]
    engine = step_gradient(lambda *a: corsa_step(*a[:4], ref, *a[4:]), editor.model, params, editor.config,
                           enc, group, pad, torch.Generator().manual_seed(0))
    slow = step_gradient(straightforward_step, editor.model, params, editor.config, enc, group, pad,
                         torch.Generator().manual_seed(0))
    assert engine.norm() > 0
    assert torch.allclose(engine, slow, atol=1e-6, rtol=1e-4), (engine - slow).abs().max()


def test_shared_prompt_scores_equal_one_forward_per_answer(tiny):
    from corsa.prompts import PromptFormat

    model, tok = tiny
    fmt = PromptFormat(tok)
    prompts = [fmt.prompt_ids(p) for p in ("a short one", "a much longer prompt that needs padding", "mid")]
    answers = [[fmt.answer_ids(a) for a in pair] for pair in (("yes", "no it is not"), ("x", "y"), ("ab c", "z"))]
    batch = collate_shared(prompts, answers, tok.pad_token_id)
    assert shared_prefix(batch) >= 4  # the chat template's opening runs once for all three prompts
    shared = score_shared(model, batch)                                                         # (3, 2)
    alone = score(model, collate([(p, a) for p, pair in zip(prompts, answers) for a in pair], tok.pad_token_id))
    assert torch.allclose(shared.reshape(-1), alone, atol=1e-4)
    w = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    params = list(model.parameters())
    g_shared = torch.autograd.grad((shared * w).sum(), params, allow_unused=True)
    g_alone = torch.autograd.grad((alone.view(3, 2) * w).sum(), params, allow_unused=True)
    for a, b in zip(g_shared, g_alone):
        assert (a is None) == (b is None)
        assert a is None or torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_quick_benchmark_writes_raw_figures_ratios_and_targets(tmp_path):
    out = tmp_path / "bench.json"
    run_benchmark.main(["--quick", "--out", str(out)])
    result = json.loads(out.read_text())
    assert {"command", "machine", "versions", "memory_method", "models"} <= set(result)
    tiny = result["models"]["tiny"]
    methods = tiny["step"]["methods"]
    assert set(methods) == {"lora", "sam", "dpo", "corsa", "corsa-reuse", "corsa-momentum", "straightforward"}
    for v in methods.values():
        assert len(v["times_s"]) >= 2 and v["median_s"] > 0 and v["peak_step_mib"] > 0
        assert v["peak_total_mib"] > v["peak_step_mib"]
    assert tiny["step"]["reference_once_s"] > 0
    tte = tiny["time_to_edit"]
    for k in ("per_edit", "fixed_epochs"):
        assert tte[k]["seconds"] > 0 and 0 <= tte[k]["reliability"] <= 1
        assert 0 < tte[k]["steps_s"] < tte[k]["seconds"] and tte[k]["other_s"] > 0
    fixed = tte["fixed_epochs"]
    assert fixed["epochs"] == tte["config"]["epochs"] and fixed["edits_per_pass"] == [8] * fixed["epochs"]
    # per-edit stopping trains every edit in its first pass, then only the ones that do not hold yet
    per_edit = tte["per_edit"]["edits_per_pass"]
    assert per_edit[0] == 8 and all(n <= 8 for n in per_edit) and tte["per_edit"]["edit_steps"] == sum(per_edit)
    assert {"time/corsa_over_lora", "time/corsa_over_straightforward", "peak_total/corsa_over_lora",
            "time_to_edit/per_edit_over_fixed"} <= set(tiny["ratios"])
    assert all({"value", "limit", "met"} == set(t) for t in tiny["targets"].values())
    assert len(tiny["targets"]) == 8 and "time/corsa-reuse_over_lora" in tiny["ratios"]
    assert "time/corsa-momentum_over_lora" in tiny["ratios"]


def test_stream_cost_times_every_update_of_every_method_and_where_it_went(tmp_path):
    import stream_cost
    from conftest import SHARED_DATA

    out = tmp_path / "stream.json"
    doc = stream_cost.main(["--tiny", "--data", str(SHARED_DATA / "counterfact" / "easyedit" / "counterfact-edit.json"),
                            "--out", str(out)])
    assert json.loads(out.read_text()) == doc
    assert doc["settings"]["methods"] == ["corsa", "corsa-lifelong"]
    for name, m in doc["methods"].items():
        assert [u["update"] for u in m["updates"]] == [1, 2, 3]
        for u in m["updates"]:
            parts = u["steps_s"] + u["reference_s"] + u["hold_tests_s"] + u["other_s"]
            assert u["steps"] >= 1 and u["steps_s"] > 0 and abs(parts - u["seconds"]) < 0.01
        assert m["ratio_to_corsa"] == round(m["train_seconds"] / doc["methods"]["corsa"]["train_seconds"], 3)
    # the lifelong row replays: by update 3 it trains the 2 new edits and the 4 it holds
    assert [u["edits_trained"] for u in doc["methods"]["corsa-lifelong"]["updates"]] == [2, 4, 6]
    assert [u["edits_trained"] for u in doc["methods"]["corsa"]["updates"]] == [2, 2, 2]


def test_stream_cost_set_reaches_only_the_method_it_names(tmp_path):
    import stream_cost
    from conftest import SHARED_DATA

    doc = stream_cost.main(["--tiny", "--data", str(SHARED_DATA / "counterfact" / "easyedit" / "counterfact-edit.json"),
                            "--set", "corsa-lifelong.replay=none", "--out", str(tmp_path / "s.json")])
    assert doc["settings"]["set"] == {"corsa-lifelong": {"replay": "none"}}
    # without replay the lifelong row trains only each update's own edits, like corsa
    assert [u["edits_trained"] for u in doc["methods"]["corsa-lifelong"]["updates"]] == [2, 2, 2]


def test_shared_prefix_benchmark_times_both_layouts_and_they_agree(tmp_path):
    import shared_prefix
    from conftest import SHARED_DATA

    doc = shared_prefix.main(["--tiny", "--edits", "4", "--rounds", "1", "--out", str(tmp_path / "p.json"),
                              "--data", str(SHARED_DATA / "counterfact" / "easyedit" / "counterfact-edit.json")])
    assert doc["shared_prefix_tokens"] >= 4 and doc["max_logprob_difference"] < 1e-3
    for task in ("hold_test", "forward_backward", "corsa_step"):
        t = doc["tasks"][task]
        assert set(t["median_s"]) == {"shared", "every_row"} and all(v > 0 for v in t["median_s"].values())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_the_gpu_run_says_clearly_that_it_needs_a_gpu(tmp_path, capsys):
    import gpu_run

    out = tmp_path / "gpu.json"
    assert gpu_run.main(["--out", str(out)]) == 2
    assert "no CUDA device" in capsys.readouterr().err and not out.exists()


def test_stream_cost_runs_one_method_beside_itself_under_a_label(tmp_path):
    import stream_cost
    from conftest import SHARED_DATA

    doc = stream_cost.main(["--tiny", "--data", str(SHARED_DATA / "counterfact" / "easyedit" / "counterfact-edit.json"),
                            "--methods", "before=corsa-lifelong,corsa-lifelong", "--set", "before.replay=none",
                            "--out", str(tmp_path / "s.json")])
    assert list(doc["methods"]) == ["before", "corsa-lifelong"]
    assert doc["settings"]["set"] == {"before": {"replay": "none"}}
    # the label's option reaches the label only: it trains each update's own edits, the row replays
    assert [u["edits_trained"] for u in doc["methods"]["before"]["updates"]] == [2, 2, 2]
    assert [u["edits_trained"] for u in doc["methods"]["corsa-lifelong"]["updates"]] == [2, 4, 6]
    m = doc["methods"]["corsa-lifelong"]
    assert m["update_ratio_to_before"] == round(m["update_seconds"] / doc["methods"]["before"]["update_seconds"], 3)
    assert all(u["update_seconds"] >= u["seconds"] for u in m["updates"])


def test_stream_projection_fits_the_cost_curve_and_sums_it(tmp_path):
    """Training seconds 10 + 0.5·held on updates 2-4 (update 1 left out of the fit): the projection of
    200 edits in updates of 50 is Σ (10 + 0.5·50k) for k = 0..3 = 40 + 150 seconds."""
    import stream_projection

    for k, seconds in enumerate([99.0, 35.0, 60.0, 85.0], start=1):  # held 0, 50, 100, 150
        folder = tmp_path / "bench" / "corsa-lifelong" / f"update-{k}"
        folder.mkdir(parents=True)
        per_update = [{"metrics": {"generated/reliability": 1.0 if j < k - 1 else 0.5}} for j in range(k)]
        (folder / "eval.json").write_text(json.dumps({
            "update": k, "edit_ids": [f"e{k}-{i}" for i in range(50)], "train": {"seconds": seconds, "steps": 3},
            "eval_seconds": 1.0, "peak_rss_mb": 10.0, "counts": {"edits": 50 * k}, "per_update": per_update,
            "metrics": {"generated/reliability": 0.9, "generated/generality": None}}))
    doc = stream_projection.main([str(tmp_path / "bench"), "--gpu-speedup", "10", "--out", str(tmp_path / "p.json")])
    assert doc["fit"]["a_seconds"] == pytest.approx(10.0) and doc["fit"]["b_seconds_per_held_edit"] == pytest.approx(0.5)
    assert stream_projection.project(10.0, 0.5, 200, 50) == pytest.approx(190.0)
    rows = doc["updates"]
    assert [r["held"] for r in rows] == [50, 100, 150, 200] and [r["retention"] for r in rows] == [None, 100.0, 100.0, 100.0]
    assert rows[0]["own_update_reliability"] == 50.0 and rows[1]["reliability"] == 90.0 and rows[1]["generality"] is None
    assert doc["projection_cpu_hours"]["1000"] == pytest.approx(round((20 * 10 + 0.5 * 50 * 190) / 3600, 1))
    assert doc["projection_gpu_hours"]["1000"] == pytest.approx(round((20 * 10 + 0.5 * 50 * 190) / 36000, 2))
