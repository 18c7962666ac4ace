"""Replay (corsa.lifelong): earlier edits come from the adapter's own record, lost ones first within
a budget; a continued adapter keeps its method (CLI and Python alike); and what replay costs is
not paid twice: reference scores and hold tests that are not repeated.
"""

import json

import pytest
import torch

from corsa import Editor
from corsa.config import EditConfig
from corsa.errors import ConfigError
from corsa.step import compute_reference
from corsa.prompts import encode_edits
from corsa.records import Edit
from corsa.testing import FAST


def test_replayed_edits_come_from_the_adapters_own_record(tiny, tmp_path, toy_edits):
    from corsa.testing import save_tiny_llama

    base = save_tiny_llama(tmp_path / "base")
    first, second = toy_edits[:3], toy_edits[3:]
    Editor(str(base), method="lora", **FAST).update(first, out=tmp_path / "run1")
    saved = [json.loads(line)["id"] for line in
             (tmp_path / "run1" / "adapter" / "trained-edits.jsonl").read_text().splitlines()]
    assert saved == ["e0", "e1", "e2"]
    # a later update replays them without being given the old file
    editor = Editor(str(base), adapter=tmp_path / "run1", method="lora", replay="all", **FAST)
    assert [e.id for e in editor.lifelong.replay_set(editor.history, second)] == ["e0", "e1", "e2"]
    record = editor.update(second, out=tmp_path / "run2")
    assert record.replayed == ["e0", "e1", "e2"]
    run = json.loads((tmp_path / "run2" / "run.json").read_text())
    assert run["updates"][-1]["replayed_ids"] == ["e0", "e1", "e2"]  # after the first update's own entry
    again = [json.loads(line)["id"] for line in
             (tmp_path / "run2" / "adapter" / "trained-edits.jsonl").read_text().splitlines()]
    assert again == ["e0", "e1", "e2", "e3", "e4", "e5"]
    # an earlier prompt edited again is superseded, not replayed; replay=none replays nothing
    redo = [Edit("r0", toy_edits[0].prompt, "Elsewhere", "City0")]
    later = Editor(str(base), adapter=tmp_path / "run2", method="lora", replay="all", **FAST)
    assert "e0" not in [e.id for e in later.lifelong.replay_set(later.history, redo)]
    plain = Editor(str(base), adapter=tmp_path / "run2", method="lora", **FAST)
    assert plain.lifelong.replay_set(plain.history, redo) == []


def test_replay_budget_takes_lost_edits_first(tiny, toy_edits):
    editor = Editor(tiny, method="lora", replay="lost", **FAST)
    editor.history = list(toy_edits[:4])
    # nothing is learnt on a fresh adapter, so every earlier edit is lost
    assert [e.id for e in editor.lifelong.replay_set(editor.history, toy_edits[4:])] == ["e0", "e1", "e2", "e3"]
    editor.lifelong.config = EditConfig(method="lora", replay="all", replay_budget=2)
    assert len(editor.lifelong.replay_set(editor.history, toy_edits[4:])) == 2


def test_adapter_record_with_repeated_ids_continues(tiny, tmp_path):
    from corsa.testing import save_tiny_llama

    base = save_tiny_llama(tmp_path / "base")
    editor = Editor(str(base), method="lora", **FAST)
    editor.update([{"prompt": "The code of item 0 is", "target_new": "QQ", "target_old": "AB"}], out=tmp_path / "r1")
    editor.update([{"prompt": "The code of item 1 is", "target_new": "ZZ", "target_old": "AB"}], out=tmp_path / "r2")
    # the Python API names both "edit-0": the record still reads back, in order, for replay
    again = Editor(str(base), adapter=tmp_path / "r2", method="lora", replay="all", **FAST)
    assert [e.prompt for e in again.history] == ["The code of item 0 is", "The code of item 1 is"]
    assert len(again.lifelong.replay_set(again.history, [Edit("n", "The code of item 2 is", "XX", "AB")])) == 2


def test_a_continued_adapter_keeps_its_method_unless_told_otherwise(tmp_path, capsys):
    from corsa.cli import main
    from corsa.testing import save_tiny_llama

    model = str(save_tiny_llama(tmp_path / "model", seed=0))
    edits = tmp_path / "e.jsonl"
    edits.write_text("".join(json.dumps({"prompt": f"The code of item {i} is", "target_new": f"Q{i}",
                                         "target_old": f"A{i}"}) + "\n" for i in range(2)))
    flags = ["--model", model, "--edits", str(edits), "--epochs", "1", "--no-check", "--quiet"]

    def method(run):
        return json.loads((run / "run.json").read_text())["config"]["method"]

    assert main(["edit", *flags, "--method", "corsa-lifelong", "--out", str(tmp_path / "first")]) == 0
    capsys.readouterr()
    # no --method: the adapter's own, said on stderr; the second update replays the first's edits
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"prompt": "The code of item 7 is", "target_new": "Q7", "target_old": "A7"}) + "\n")
    again = [f if f != str(edits) else str(more) for f in flags]
    assert main(["edit", *again, "--adapter", str(tmp_path / "first"), "--out", str(tmp_path / "second")]) == 0
    assert "with corsa-lifelong, the method it was trained with" in capsys.readouterr().err
    assert method(tmp_path / "second") == "corsa-lifelong"
    assert json.loads((tmp_path / "second" / "run.json").read_text())["updates"][-1]["replayed_ids"]
    # --method given: that one
    assert main(["edit", *again, "--adapter", str(tmp_path / "second"), "--method", "lora",
                 "--out", str(tmp_path / "third")]) == 0
    assert method(tmp_path / "third") == "lora"


def test_the_python_api_continues_an_adapter_with_its_method_as_the_cli_does(tmp_path):
    import corsa
    from corsa.testing import save_tiny_llama

    model = str(save_tiny_llama(tmp_path / "model", seed=0))
    first = [{"prompt": f"The code of item {i} is", "target_new": f"Q{i}", "target_old": f"A{i}"} for i in range(2)]
    more = [{"prompt": "The code of item 7 is", "target_new": "Q7", "target_old": "A7"}]
    corsa.edit(first, model=model, method="corsa-lifelong", out=tmp_path / "first", epochs=1, progress=False)
    editor = Editor(model, adapter=tmp_path / "first", progress=False)
    assert editor.config.method == "corsa-lifelong" and editor.config.value("replay") == "all"
    assert editor.scope_mode == "subject"
    again = corsa.edit(more, model=model, adapter=tmp_path / "first", out=tmp_path / "second", epochs=1, progress=False)
    assert again.config.method == "corsa-lifelong"
    assert again.updates[-1].replayed == ["edit-0", "edit-1"]  # the first update's edits, replayed
    # a method given wins
    assert Editor(model, adapter=tmp_path / "second", method="lora", progress=False).config.method == "lora"


def _scripted_update(tiny, monkeypatch, answers, replay_held, retest_every=1, epochs=10, max_steps=0):
    """train_update on 6 edits (2 new, 4 replayed) with the step stubbed and the hold tests' answers scripted.

    Returns the result, the edits each step trained and the edits each hold test was given.
    """
    from corsa import engine

    editor = Editor(tiny, method="lora", template="raw", batch_size=8, epochs=epochs, progress=False,
                    retest_every=retest_every, max_steps=max_steps)
    edits = [Edit(f"e{i}", f"The code of item {i} is", "QQ", "AB") for i in range(6)]
    encoded = encode_edits(editor.fmt, edits, None, need_rejected=True)
    index = {id(e): i for i, e in enumerate(encoded)}
    answers = iter(answers)
    tested, trained = [], []

    def holding(model, fmt, part, cfg, bs):
        tested.append(tuple(index[id(e)] for e in part))
        return next(answers)

    def step(model, params, cfg, enc, ref, group, pad, generator, pres=None, memory=None):
        trained.append(sorted(i for mb in group for i in mb))
        for p in params:
            p.grad = torch.zeros_like(p)
        return {}

    monkeypatch.setattr(engine, "holding", holding)
    monkeypatch.setattr(engine, "corsa_step", step)
    result = engine.train_update(editor.model, editor.fmt, edits, encoded, editor.config, progress=False,
                                 n_new=2, replay_held=replay_held)
    return result, trained, tested


def test_the_last_hold_test_given_for_replayed_edits_is_not_repeated(tiny, monkeypatch):
    T, F = True, False
    # given: replayed edit 5 is lost; pass 1 trains 0, 1, 5; the test of all six finds 1 and 3 not holding
    result, trained, tested = _scripted_update(tiny, monkeypatch, [[T, F, T, F, T, T], [T] * 6], [T, T, T, F])
    assert trained == [[0, 1, 5], [1, 3]]
    assert tested == [tuple(range(6))] * 2                         # no test of the replayed edits first
    assert result.stopped_early and result.held == [T] * 6
    # without it, the replayed edits are tested before the first pass
    result, trained, tested = _scripted_update(tiny, monkeypatch, [[T, T, T, F], [T] * 6], None)
    assert tested[0] == (2, 3, 4, 5) and trained == [[0, 1, 5]] and result.held == [T] * 6


def test_resting_edits_are_tested_every_kth_pass_and_an_update_ends_on_a_test_of_all(tiny, monkeypatch):
    T, F = True, False
    answers = [[F, F, T],            # pass 1 (odd): only the edits it trained (0, 1, 5); 5 now holds
               [T] * 6,              # pass 2: everything; all hold
               ]
    result, trained, tested = _scripted_update(tiny, monkeypatch, answers, [T, T, T, F], retest_every=2)
    assert trained == [[0, 1, 5], [0, 1]]
    assert tested == [(0, 1, 5), tuple(range(6))]
    assert result.stopped_early and result.held == [T] * 6
    # the edits a pass trained all hold: the resting ones are tested at once (the trained ones not
    # again), before the update may end
    answers = [[T, T, T], [T, F, T],   # pass 1: the trained ones hold, so the rest are tested: 3 is lost
               [T] * 6]                # pass 2 (even) tests everything
    result, trained, tested = _scripted_update(tiny, monkeypatch, answers, [T, T, T, F], retest_every=2)
    assert trained == [[0, 1, 5], [3]] and tested == [(0, 1, 5), (2, 3, 4), tuple(range(6))]
    assert result.held == [T] * 6
    # a resting edit keeps its last answer until its test, and the last pass of the budget tests everything
    answers = [[F, F, F], [F, F, F], [F, F, F, F, F, F]]
    result, trained, tested = _scripted_update(tiny, monkeypatch, answers, [T, T, T, F], retest_every=5, epochs=3)
    assert tested == [(0, 1, 5), (0, 1, 5), tuple(range(6))] and result.held == [F] * 6
    # a spent step budget mid-update is the last pass too: everything is tested
    answers = [[F, F, T], [F] * 6]
    result, trained, tested = _scripted_update(tiny, monkeypatch, answers, [T, T, T, F], retest_every=5, max_steps=2)
    assert trained == [[0, 1, 5], [0, 1]] and tested == [(0, 1, 5), tuple(range(6))]
    with pytest.raises(ConfigError, match="--retest-every"):
        EditConfig(retest_every=2, edit_stop=False, early_stop=True)
    # corsa-lifelong spaces its tests by default; with per-edit stopping off there is nothing to space
    assert EditConfig(method="corsa-lifelong").value("retest_every") == 0
    assert not EditConfig(method="corsa-lifelong", edit_stop=False, early_stop=True).edit_stop
    with pytest.raises(ConfigError, match="non-negative"):
        EditConfig(retest_every=-1)


def test_with_retest_every_0_resting_edits_are_tested_only_once_the_trained_ones_hold(tiny, monkeypatch):
    T, F = True, False
    answers = [[F, F, T],            # pass 1: only the trained edits (0, 1, 5); 5 holds
               [F, T],               # pass 2: 0 and 1; 0 does not yet
               [T], [T] * 5,         # pass 3: 0 holds, so every other edit is tested at once: all hold
               ]
    result, trained, tested = _scripted_update(tiny, monkeypatch, answers, [T, T, T, F], retest_every=0)
    assert trained == [[0, 1, 5], [0, 1], [0]]
    # pass 1 tested what it trained; pass 2 the two still training; pass 3 the one, then the rest at once
    assert tested == [(0, 1, 5), (0, 1), (0,), (1, 2, 3, 4, 5)]
    assert result.stopped_early and result.held == [T] * 6


def test_a_spent_budget_leaves_the_last_tests_answers(tiny, monkeypatch):
    answers = [[False] * 6 for _ in range(10)]
    result, trained, tested = _scripted_update(tiny, monkeypatch, answers, [True] * 4)
    assert len(trained) == 10 and not result.stopped_early and result.held == [False] * 6
    with pytest.raises(ValueError, match="replay_held"):
        _scripted_update(tiny, monkeypatch, answers, [True] * 3)


def test_later_updates_score_only_new_reference_pairs_and_reuse_the_last_hold_test(tiny, monkeypatch):
    from corsa import engine, scoring

    sizes = []
    real = engine.holding
    monkeypatch.setattr(engine, "holding", lambda m, f, part, *a: sizes.append(len(part)) or real(m, f, part, *a))
    scored = []
    real_pairs = scoring.score_pairs  # the base model's scores, kept across updates (scoring.BaseScores)
    monkeypatch.setattr(scoring, "score_pairs", lambda m, f, pairs, *a: scored.append(len(pairs)) or real_pairs(m, f, pairs, *a))
    first = [Edit(f"a{i}", f"The code of item {i} is", "QQ", "AB") for i in range(3)]
    second = [Edit(f"b{i}", f"The code of thing {i} is", "ZZ", "CD") for i in range(2)]
    editor = Editor(tiny, method="dpo", replay="all", template="raw", epochs=60, batch_size=4,
                    lr=3e-2, warmup_steps=5, margin_target=0.5, progress=False)
    editor.update(first)
    assert scored == [6] and len(editor.lifelong.base_scores) == 6        # y⁺ and y⁻ of 3 edits
    assert editor.lifelong.known_held(first) == [True] * 3                # the first update ended with all holding
    scored.clear(), sizes.clear()
    record = editor.update(second)
    assert scored == [4]                                           # only the 2 new edits' pairs
    assert record.replayed == ["a0", "a1", "a2"] and sizes[0] == 5  # the first test is after pass 1, of all 5
    # the cached reference is the base model's score, as a fresh one gives it
    enc = encode_edits(editor.fmt, first + second, None, need_rejected=True)
    fresh = compute_reference(editor.model, editor.fmt, enc, editor.config, 16)
    kept = compute_reference(editor.model, editor.fmt, enc, editor.config, 16, editor.lifelong.base_scores)
    assert torch.allclose(fresh.chosen, kept.chosen, atol=1e-4) and torch.allclose(fresh.rejected, kept.rejected, atol=1e-4)


def test_an_update_gets_negatives_and_anchors_only_for_what_it_trains(tiny, monkeypatch):
    """Replayed edits that hold (the last test) rest: no negatives, no anchors, no reference until lost."""
    import corsa.lifelong as L

    editor = Editor(tiny, method="corsa-lifelong", progress=False, keep_subject=2, negatives=("interference",))
    history = [Edit(f"h{i}", f"The capital of Land{i} is", f"City{i}", f"Town{i}", subject=f"Land{i}") for i in range(4)]
    new = [Edit("n0", "The capital of Land9 is", "City9", "Town9", subject="Land9")]
    editor.lifelong.tested(history, [True, False, True, True])  # the last update's final test: h1 lost
    tests = []
    monkeypatch.setattr(L, "holding", lambda *a: tests.append(1) or [True] * len(a[2]))
    plan = editor.lifelong.plan(history, new, index=1)
    assert [e.id for e in plan.replay] == ["h0", "h1", "h2", "h3"] and plan.replay_held == [True, False, True, True]
    assert tests == []  # known from the last test: not tested again
    named = {s for p in plan.anchors.prompts for s in ("Land9", "Land0", "Land1", "Land2", "Land3") if s in p}
    assert named == {"Land9", "Land1"}  # the new edit's subject and the lost one's
    assert plan.encoded[0].extra and plan.encoded[2].extra and not plan.encoded[1].extra  # h1 lost: negatives
    # in a new process nothing is known: the replayed edits are tested once, in the plan
    fresh = Editor(tiny, method="corsa-lifelong", progress=False, keep_subject=2)
    monkeypatch.setattr(L, "holding", lambda *a: tests.append(len(a[2])) or [True, True, False, True])
    plan = fresh.lifelong.plan(history, new, index=1)
    assert tests == [4] and plan.replay_held == [True, True, False, True]


def test_a_continued_adapter_knows_what_held_at_its_last_test(tmp_path, monkeypatch):
    """run.json keeps the last update's final test; continuing the adapter replays without testing its
    history first, and a damaged record only costs that test."""
    import corsa
    import corsa.lifelong as L
    from corsa.testing import save_tiny_llama

    model = str(save_tiny_llama(tmp_path / "model", seed=0))
    first = [{"prompt": f"The code of item {i} is", "target_new": f"Q{i}", "target_old": f"A{i}"} for i in range(3)]
    corsa.edit(first, model=model, method="corsa-lifelong", out=tmp_path / "first", epochs=2, progress=False)
    run = json.loads((tmp_path / "first" / "run.json").read_text())
    keys = [[r["prompt"], r["target_new"], r["target_old"]] for r in first]
    assert sorted(run["held"]["held"] + run["held"]["lost"]) == keys
    assert (run["held"]["margin_target"], run["held"]["train_eos"]) == (12.0, True)
    tests = []
    real = L.holding
    monkeypatch.setattr(L, "holding", lambda *a: tests.append(len(a[2])) or real(*a))
    new = [Edit("n", "The code of item 9 is", "Q9", "A9")]
    editor = Editor(model, adapter=tmp_path / "first", progress=False)
    plan = editor.lifelong.plan(editor.history, new, index=1)
    assert tests == [] and plan.replay_held == [k in run["held"]["held"] for k in keys]
    # tested at another γ, the record says nothing about this one: the replayed edits are tested once
    Editor(model, adapter=tmp_path / "first", progress=False, margin_target=4.0).lifelong.plan(
        Editor(model, adapter=tmp_path / "first", progress=False).history, new, index=1)
    assert tests == [3]
    # a record without it (an older version's, by ids, or damaged): tested once too
    run["held"] = {"held": ["edit-0"], "lost": []}
    (tmp_path / "first" / "run.json").write_text(json.dumps(run))
    editor = Editor(model, adapter=tmp_path / "first", progress=False)
    editor.lifelong.plan(editor.history, new, index=1)
    assert tests == [3, 3]
