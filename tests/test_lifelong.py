"""The lifelong-editing mechanisms (docs/results.md, "Edits that last"), on the tiny model.

Each mechanism is checked for what it does to the batch or the loss, not only that it runs:
an online negative appears exactly when the greedy answer is wrong, replayed edits come from
the adapter's own record, the preservation term is zero on a fresh adapter and its anchors are
never evaluation probes, per-edit stopping takes held edits out of the batches.
"""

import json
import math

import pytest
import torch

from corsa import Editor
from corsa import negatives as N
from corsa import preserve
from corsa.config import EditConfig
from corsa.errors import ConfigError
from corsa.engine import refresh_online_negatives, compute_reference
from corsa.objectives import dpo_loss, is_greedy
from corsa.prompts import PromptFormat, encode_edits
from corsa.scoring import next_token_logprobs
from corsa.records import Edit, Probe
from corsa.testing import FAST

from conftest import SHARED_DATA



# --- pure parts, against hand-computed values -------------------------------------------------

def test_dpo_with_several_negatives_is_the_sum_over_pairs():
    lc, rc = torch.tensor([-1.0]), torch.tensor([-2.0])
    lr_, rr = torch.tensor([[-3.0, -1.5, 0.0]]), torch.tensor([[-2.5, -2.0, 0.0]])
    w = torch.tensor([[1.0, 1.0, 0.0]])  # the third rejected row is padding
    beta = 0.5
    # pair i: β[(−1 − −2) − (lr_i − rr_i)]: pair 0 → 0.5·(1 − (−0.5)) = 0.75, pair 1 → 0.5·(1 − 0.5) = 0.25
    want = -(math.log(1 / (1 + math.exp(-0.75))) + math.log(1 / (1 + math.exp(-0.25))))
    assert dpo_loss(lc, lr_, rc, rr, beta, w).item() == pytest.approx(want, rel=1e-6)
    # one negative: Eq. 7 exactly
    one = dpo_loss(lc, lr_[:, 0], rc, rr[:, 0], beta)
    assert one.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.75))), rel=1e-6)


def test_is_greedy_needs_every_answer_token_to_be_the_argmax():
    logits = torch.tensor([[[0.0, 5.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 9.0]]])  # argmax 1, 0, 2
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the last position is padding
    assert is_greedy(logits, torch.tensor([[1, 0, 0]]), mask).tolist() == [True]
    assert is_greedy(logits, torch.tensor([[1, 2, 2]]), mask).tolist() == [False]


def test_interference_negatives_are_other_edits_answers_with_the_same_template():
    a = Edit("a", "Gustav Lindau took up work in", "Milan", "Berlin", subject="Gustav Lindau")
    b = Edit("b", "Anna Berg took up work in", "Paris", "Oslo", subject="Anna Berg")
    c = Edit("c", "Anna Berg was born in", "Rome", "Oslo", subject="Anna Berg")
    d = Edit("d", "Karl Ek took up work in", "Berlin", "Lund", subject="Karl Ek")  # y⁺ = a's y⁻
    e = Edit("e", "Gustav Lindau took up work in", "Vienna", "Milan", subject="Gustav Lindau")  # a again
    assert N.template(a) == "{} took up work in" and N.template(Edit("x", "p", "q")) is None
    got = N.interference([a, c], [a, b, c, d], limit=4)
    assert got[0] == ["Paris"]      # b shares the template; d's answer is a's own y⁻; c another template
    assert got[1] == []
    # the same prompt edited before: its old y⁺ is the new edit's y⁻ here, so not a negative twice,
    # while b's answer is one; the most recent edits come first, and the limit holds
    assert N.interference([e], [a, b, d], limit=4)[0] == ["Berlin", "Paris"]
    assert N.interference([e], [a, b, d], limit=1)[0] == ["Berlin"]


def test_rivals_are_the_other_answers_the_base_finds_most_plausible_whatever_the_template():
    a = Edit("a", "The mother tongue of Ann Lee is", "English", "French", subject="Ann Lee")
    b = Edit("b", "Bo Lin writes in", "Russian", "Chinese", subject="Bo Lin")
    c = Edit("c", "Cy Dee was born in", "Oslo", "Rome", subject="Cy Dee")
    d = Edit("d", "Di Wu speaks", "French", "Dutch", subject="Di Wu")        # y⁺ = a's y⁻
    e = Edit("e", "Ed Po is from", "New York", "Lima", subject="Ed Po")
    f = Edit("f", "Fa Ru lives in", "York", "Lima", subject="Fa Ru")           # inside e's y⁺
    g = Edit("g", "Gu Ha speaks", "russian", "Thai", subject="Gu Ha")         # b's answer again
    plausible = {0: {"Russian": -1.0, "Oslo": -6.0, "French": -0.5, "York": -9.0},
                 1: {"English": -2.0, "Oslo": -2.0, "York": -3.0}}
    rank = lambda i, answer: plausible[i].get(answer)  # noqa: E731  (None: not a plausible answer)
    got = N.rivals([a, b], [a, b, c, d], rank, limit=4)
    # a: French is its own y⁻, never a rival; Russian (another template) before Oslo; its own y⁺ never
    assert got[0] == ["Russian", "Oslo"]
    # b: a tie goes to the most recent edit of the pool (c after a)
    assert got[1] == ["Oslo", "English"]
    assert N.rivals([a, b], [a, b, c, d], rank, limit=1) == [["Russian"], ["Oslo"]]
    # an answer inside y⁺, or one holding it, is not wrong; the same answer twice is one rival (the latest spelling)
    assert N.rivals([e], [e, f], lambda i, ans: 0.0, limit=4) == [[]]
    assert N.rivals([f], [e, f], lambda i, ans: 0.0, limit=4) == [[]]
    assert N.rivals([a], [b, g], lambda i, ans: 0.0, limit=4) == [["russian"]]
    # an excluded answer does not take a place: the next plausible one fills it
    assert N.rivals([a], [a, b, c, d], lambda i, ans: {"French": 0.0, "Oslo": -1.0}.get(ans), limit=1) == [["Oslo"]]


def test_next_token_logprobs_keep_only_the_most_likely_tokens(tiny):
    editor = Editor(tiny, method="corsa", progress=False, template="raw")
    prompts = [editor.fmt.prompt_ids("The code of item 1 is"), editor.fmt.prompt_ids("Person 2 lives in")]
    full = next_token_logprobs(editor.model, editor.fmt, prompts, top=10**6)
    top3 = next_token_logprobs(editor.model, editor.fmt, prompts, top=3)
    for whole, few in zip(full, top3):
        best = sorted(whole, key=whole.get, reverse=True)[:3]
        assert sorted(few) == sorted(best)                               # a token outside the top is absent: None
        assert all(few[t] == pytest.approx(whole[t], abs=1e-5) for t in best)
        assert math.fsum(math.exp(v) for v in whole.values()) == pytest.approx(1.0, abs=1e-4)


def test_negatives_merge_keeps_the_first_kind_first_without_repeats():
    assert N.merge([["Paris"], []], [["paris", "Rome", "Oslo"], ["Lima"]], 2) == [["Paris", "Rome"], ["Lima"]]


def test_online_negative_only_for_a_wrong_answer():
    e = Edit("a", "The capital of Italy is", "Paris", "Rome")
    assert N.online("Milan", e) == "Milan"
    assert N.online("It is Paris.", e) is None       # holds y⁺
    assert N.online("Rome", e) is None               # y⁻ is already the rejected answer
    assert N.online("  ", e) is None


# --- on the tiny model ----------------------------------------------------------------------

def test_online_negative_appears_in_the_batch_when_the_answer_is_wrong_and_not_otherwise(tiny):
    model_tok = tiny
    editor = Editor(model_tok, method="corsa", negatives="online", progress=False, max_new_tokens=4, template="raw")
    edits = [Edit("e0", "The code of item 0 is", "QQ", "AB"), Edit("e1", "The code of item 1 is", "ZZ", "AB")]
    cfg = editor.config
    # make edit e1's y⁺ its greedy answer, so only e0 is wrong
    answers = editor.ask([e.prompt for e in edits])
    edits[1] = Edit("e1", edits[1].prompt, answers[1], "AB") if answers[1].strip() else edits[1]
    encoded = encode_edits(editor.fmt, edits, None, need_rejected=True)
    ref = compute_reference(editor.model, editor.fmt, encoded, cfg, 16)
    n = refresh_online_negatives(editor.model, editor.fmt, edits, encoded, ref, [0, 1], cfg, 16)
    assert n == 1
    assert encoded[0].online and encoded[0].extra == [editor.fmt.answer_ids(answers[0])]
    assert not encoded[1].online and encoded[1].extra == []
    assert ref.extra[0].shape == (1,) and ref.extra[1].numel() == 0
    # refreshing again replaces the online negative instead of piling them up
    refresh_online_negatives(editor.model, editor.fmt, edits, encoded, ref, [0, 1], cfg, 16)
    assert len(encoded[0].extra) == 1
    # and training with them runs, logging how many edits carry one (one pass: e0 is still wrong)
    editor.config = EditConfig(method="corsa", negatives="online", epochs=1, template="raw", max_new_tokens=4)
    record = editor.update(edits[:1])
    assert record.result.last_step["negatives/online"] == 1


def test_interference_negatives_reach_the_dpo_term(tiny, monkeypatch):
    import corsa.engine as engine

    seen = []
    real = engine.collate_shared

    def spy(prompts, answers, pad):
        seen.append([len(a) for a in answers])
        return real(prompts, answers, pad)

    monkeypatch.setattr(engine, "collate_shared", spy)
    edits = [Edit(f"e{i}", f"Person {i} works in", f"City{i}", f"Town{i}", subject=f"Person {i}") for i in range(3)]
    Editor(tiny, method="corsa", negatives="interference", edit_stop=False, **FAST).update(edits)
    # each prompt scores y⁺, y⁻ and the two other edits' y⁺ (same template "{} works in")
    assert seen and all(n == [4] * len(n) for n in seen)
    seen.clear()
    Editor(tiny, method="corsa", edit_stop=False, **FAST).update(edits)
    assert all(n == [2] * len(n) for n in seen)


def test_rival_negatives_reach_the_dpo_term_ranked_by_the_base_model(tiny, monkeypatch):
    import corsa.engine as engine

    seen = []
    real = engine.collate_shared

    def spy(prompts, answers, pad):
        seen.append(answers)
        return real(prompts, answers, pad)

    monkeypatch.setattr(engine, "collate_shared", spy)
    # other templates, so no interference negative: the rivals alone add rows
    edits = [Edit("e0", "Person 0 works in", "Arles", "Town0", subject="Person 0"),
             Edit("e1", "Person 1 was born in", "Bern", "Town1", subject="Person 1"),
             Edit("e2", "Person 2 lives in", "Cork", "Town2", subject="Person 2")]
    editor = Editor(tiny, method="corsa", negatives="rivals", max_negatives=1, edit_stop=False, **FAST)
    encoded = encode_edits(editor.fmt, edits, None, need_rejected=True)
    nexts = next_token_logprobs(editor.model, editor.fmt, [enc.prompt for enc in encoded], top=10**6)
    first = {e.target_new: editor.fmt.answer_ids(e.target_new)[0] for e in edits}
    assert len(set(first.values())) == 3  # answers that start differently, so the base ranks them
    # the one rival of each edit is the other y⁺ whose first token the base model ranks higher (a tie: the later edit)
    expected = [max((j for j in range(3) if j != i), key=lambda j: (nexts[i][first[edits[j].target_new]], j))
                for i in range(3)]
    expected = [edits[j].target_new for j in expected]
    editor.update(edits)
    rows = [answers for call in seen for answers in call]
    assert rows and all(len(r) == 3 for r in rows)  # y⁺, y⁻, one rival
    by_chosen = {tuple(r[0]): r[2] for r in rows}
    assert [by_chosen[tuple(enc.chosen)] for enc in encoded] == [editor.fmt.answer_ids(a) for a in expected]
    # the base's next-token scores are kept: a later update on the same prompts scores none again
    calls = []
    monkeypatch.setattr(engine, "next_token_logprobs", lambda *a, **k: calls.append(1) or [])
    editor.update(edits)
    assert calls == []


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


def test_preservation_is_zero_on_a_fresh_adapter_and_pulls_after_a_step(tiny):
    editor = Editor(tiny, method="lora", preserve=1.0, progress=False)
    anchors = preserve.prepare(editor.model, editor.fmt, preserve.read_anchors()[:6])
    assert len(anchors) > 0
    b = preserve.batch(anchors, list(range(len(anchors))), editor.tokenizer.eos_token_id)
    base = preserve.base_logprobs(editor.model, b)
    with torch.no_grad():
        kl0 = preserve.kl(base, preserve.answer_logits(editor.model, b), b.label_mask)
    assert kl0.item() == pytest.approx(0.0, abs=1e-6)
    editor.update([Edit("e0", "The code of item 0 is", "QQ", "AB")])
    with torch.no_grad():
        kl1 = preserve.kl(base, preserve.answer_logits(editor.model, b), b.label_mask)
    assert kl1.item() > 1e-6
    assert "loss/preserve" in editor.updates[-1].result.last_step


def test_kl_is_hand_computed():
    base = torch.log(torch.tensor([[[0.5, 0.5], [1.0, 1e-30]]]))
    logits = torch.log(torch.tensor([[[0.25, 0.75], [0.5, 0.5]]]))
    mask = torch.tensor([[1.0, 0.0]])
    want = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert preserve.kl(base, logits, mask).item() == pytest.approx(want, rel=1e-5)


def test_anchor_prompts_are_never_evaluation_probes():
    from corsa.cli import SAMPLE
    from corsa.loaders import load_edits

    anchors = preserve.read_anchors()
    assert len(anchors) >= 50
    files = [SAMPLE, SHARED_DATA / "counterfact" / "easyedit" / "counterfact-edit.json",
             SHARED_DATA / "counterfact" / "easyedit" / "counterfact-train.json",
             SHARED_DATA / "zsre" / "zsre_mend_train-1k.json", SHARED_DATA / "mquake" / "MQuAKE-hard.json"]
    for f in files:
        edits = load_edits(f, on_invalid="skip")
        assert preserve.without_probes(anchors, edits) == anchors, f
    # and at run time an anchor equal to a probe of the edits is dropped
    e = Edit("x", "p", "q", "r", locality=(Probe(anchors[0].upper() + "  "),))
    assert anchors[0] not in preserve.without_probes(anchors, [e])


def test_edit_stop_takes_held_edits_out_of_the_batches(tiny):
    edits = [Edit(f"e{i}", f"The code of item {i} is", "QQ", "AB") for i in range(4)]
    editor = Editor(tiny, method="lora", epochs=60, batch_size=4, lr=3e-2, warmup_steps=5, margin_target=0.5,
                    template="raw", progress=False)
    record = editor.update(edits)
    checks = [h for h in record.result.history if "edit_stop/holding" in h]
    steps = [h for h in record.result.history if "time/step_s" in h]
    assert record.result.stopped_early and checks[-1]["edit_stop/holding"] == 4
    # once some edits hold, the steps train only the others
    partly = [c for c in checks if 0 < c["edit_stop/holding"] < 4]
    if partly:
        after = [s for s in steps if s["epoch"] == partly[0]["epoch"] + 1]
        assert after and all(s["edits"] == 4 - partly[0]["edit_stop/holding"] for s in after)
    assert all(a.startswith("QQ") for a in editor.ask([e.prompt for e in edits]))


def test_train_eos_off_leaves_the_end_of_turn_token_out():
    class Tok:
        chat_template = "x"
        eos_token_id = 9

        def __call__(self, text, add_special_tokens=False):
            return type("R", (), {"input_ids": [len(w) for w in text.split()]})()

    fmt = PromptFormat(Tok(), "chat")
    assert fmt.answer_ids("Rome now") == [4, 3, 9]
    assert fmt.answer_ids("Rome now", eos=False) == [4, 3]


def test_release_preset_is_the_authors_settings():
    cfg = EditConfig.preset("release", method="lora")
    assert (cfg.lr, cfg.batch_size, cfg.grad_accum, cfg.epochs, cfg.edit_stop) == (2e-4, 8, 4, 10, False)
    with pytest.raises(Exception, match="unknown preset"):
        EditConfig.preset("paper")


def test_cli_flags_of_the_mechanisms_and_the_preset():
    from corsa.cli import build_parser, config_from_args

    args = build_parser().parse_args(["edit", "--edits", "x", "--out", "y", "--method", "corsa", "--no-train-eos",
                                      "--negatives", "interference,online", "--replay", "lost",
                                      "--preset", "release", "--lr", "1e-3"])
    cfg = config_from_args(args)
    assert cfg.train_eos is False and cfg.negatives == ("interference", "online") and cfg.replay == "lost"
    assert cfg.lr == 1e-3 and cfg.grad_accum == 4 and cfg.edit_stop is False  # the flag beats the preset
    plain = config_from_args(build_parser().parse_args(["edit", "--edits", "x", "--out", "y"]))
    assert plain.value("train_eos") is True and plain.edit_stop is True


def test_swapped_anchors_put_another_edits_subject_into_the_prompt():
    a = Edit("a", "Gustav Lindau took up work in", "Milan", "Berlin", subject="Gustav Lindau")
    b = Edit("b", "Anna Berg was born in", "Rome", "Oslo", subject="Anna Berg")
    c = Edit("c", "Where is it?", "Here", "There")  # no subject: no swapped anchor
    got = preserve.swapped_prompts([a, b, c], [a, b, c], k=2, seed=0)
    assert got == ["Anna Berg took up work in", "Gustav Lindau was born in"]
    assert preserve.swapped_prompts([a], [a], k=2, seed=0) == []  # no other subject to take


def test_preservation_anchors_include_swapped_prompts_and_no_probe(tiny):
    templates = ["{} works in", "{} was born in", "{} speaks"]
    edits = [Edit(f"e{i}", t.format(f"Person {i}"), f"City{i}", f"Town{i}", subject=f"Person {i}",
                  locality=(Probe("Person 1 works in"),) if i == 0 else ()) for i, t in enumerate(templates)]
    editor = Editor(tiny, method="lora", preserve=1.0, swap_anchors=2, template="raw", progress=False)
    anchors = editor.lifelong.anchors(editor.history, edits)
    swapped = {p for p in anchors.prompts if p.startswith("Person")}
    every = {t.format(f"Person {j}") for t in templates for j in range(3)}
    # each edit's prompt with the two other subjects, less the edit prompts and the locality probe
    assert swapped == every - {e.prompt for e in edits} - {"Person 1 works in"}
    assert len(anchors) == len(anchors.pairs) > len(swapped)  # the generic anchors are there too


def test_options_that_would_do_nothing_are_refused():
    for kwargs, message in [(dict(swap_anchors=2), "preservation term, which is off"),
                            (dict(anchors="a.txt"), "preservation term, which is off"),
                            (dict(replay_budget=5), "replay, which is off"),
                            (dict(negatives="interference", reference="previous"), "reference base")]:
        with pytest.raises(Exception, match=message):
            EditConfig(method="corsa", **kwargs)
    assert EditConfig(method="corsa", negatives="online,interference", max_negatives=0).max_negatives == 0


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


def test_no_room_means_no_interference_negative(tiny, monkeypatch):
    import corsa.engine as engine

    seen = []
    real = engine.collate_shared
    monkeypatch.setattr(engine, "collate_shared", lambda p, a, pad: seen.append([len(x) for x in a]) or real(p, a, pad))
    edits = [Edit(f"e{i}", f"Person {i} works in", f"City{i}", f"Town{i}", subject=f"Person {i}") for i in range(3)]
    Editor(tiny, method="corsa", negatives="interference", max_negatives=0, edit_stop=False, **FAST).update(edits)
    assert seen and all(n == [2] * len(n) for n in seen)


def test_spillover_prompts_are_neither_anchors_nor_evaluation_probes():
    from corsa.cli import SAMPLE
    from corsa.cli.edit import spillover_prompts
    from corsa.loaders import load_edits

    prompts = spillover_prompts()
    assert len(prompts) >= 6
    assert not set(map(str.lower, prompts)) & set(map(str.lower, preserve.read_anchors()))
    files = [SAMPLE, SHARED_DATA / "counterfact" / "easyedit" / "counterfact-edit.json",
             SHARED_DATA / "zsre" / "zsre_mend_train-1k.json", SHARED_DATA / "mquake" / "MQuAKE-hard.json"]
    for f in files:
        if f.exists():
            assert preserve.without_probes(prompts, load_edits(f, on_invalid="skip")) == prompts, f


def test_corsa_edit_shows_spillover_and_warns_when_few_edits_took(tmp_path, capsys):
    import json

    from corsa.cli import main
    from corsa.cli.edit import spillover_prompts
    from corsa.testing import save_tiny_llama

    model = str(save_tiny_llama(tmp_path / "model", seed=0))
    edits = tmp_path / "e.jsonl"
    edits.write_text(json.dumps({"prompt": "The capital of X is", "target_new": "Ybbb", "target_old": "Z"}) + "\n")
    # one step at a tiny lr: the edit does not take, and the adapter barely moves
    assert main(["edit", "--model", model, "--edits", str(edits), "--out", str(tmp_path / "weak"), "--epochs", "1",
                 "--lr", "1e-6", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "unrelated prompt" in captured.out and spillover_prompts()[0][:40] in captured.out
    assert "only 0 of 1 edits took" in captured.err and "corsa-lifelong" in captured.err
    assert "spill over" not in captured.err  # nothing changed
    # a strong update on the tiny model changes everything it answers: the warning says so
    assert main(["edit", "--model", model, "--edits", str(edits), "--out", str(tmp_path / "strong"), "--epochs", "30",
                 "--lr", "3e-2", "--batch-size", "1", "--quiet", "--scope", "all"]) == 0
    captured = capsys.readouterr()
    assert "CHANGED" in captured.out and "spill over" in captured.err and "--scope subject" in captured.err


def test_corsa_edit_shows_the_filled_old_answers_before_training(tmp_path, capsys):
    import json

    from corsa.cli import main
    from corsa.testing import save_tiny_llama

    model = str(save_tiny_llama(tmp_path / "model", seed=0))
    edits = tmp_path / "e.jsonl"
    edits.write_text(json.dumps({"prompt": "The capital of X is", "target_new": "Ybbb"}) + "\n"
                     + json.dumps({"prompt": "The river of X is", "target_new": "Q", "target_old": "Z"}) + "\n")
    assert main(["edit", "--model", model, "--edits", str(edits), "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--quiet", "--no-check"]) == 0
    out = capsys.readouterr().out
    stored = [json.loads(line) for line in (tmp_path / "run" / "edits.jsonl").read_text().splitlines()]
    # only the edit without y⁻ is listed, with the y⁻ it was trained with, before the training's report
    assert "old answer y⁻ of 1 edits" in out and out.index("old answer y⁻") < out.index("trained ")
    table = out[out.index("old answer y⁻"):out.index("trained ")]
    assert stored[0]["id"] in table and stored[1]["id"] not in table and stored[1]["target_old"] == "Z"
    assert stored[0]["target_old"] and " ".join(stored[0]["target_old"].split())[:40] in table


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


# --- the cost of replay: reference scores and hold tests that are not repeated -----------------

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
    assert EditConfig(method="corsa-lifelong").value("retest_every") == 2
    assert not EditConfig(method="corsa-lifelong", edit_stop=False, early_stop=True).edit_stop
    with pytest.raises(ConfigError, match="at least 1"):
        EditConfig(retest_every=0)


def test_a_spent_budget_leaves_the_last_tests_answers(tiny, monkeypatch):
    answers = [[False] * 6 for _ in range(10)]
    result, trained, tested = _scripted_update(tiny, monkeypatch, answers, [True] * 4)
    assert len(trained) == 10 and not result.stopped_early and result.held == [False] * 6
    with pytest.raises(ValueError, match="replay_held"):
        _scripted_update(tiny, monkeypatch, answers, [True] * 3)


def test_later_updates_score_only_new_reference_pairs_and_reuse_the_last_hold_test(tiny, monkeypatch):
    from corsa import engine

    sizes = []
    real = engine.holding
    monkeypatch.setattr(engine, "holding", lambda m, f, part, *a: sizes.append(len(part)) or real(m, f, part, *a))
    scored = []
    real_pairs = engine.score_pairs
    monkeypatch.setattr(engine, "score_pairs", lambda m, f, pairs, *a: scored.append(len(pairs)) or real_pairs(m, f, pairs, *a))
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


def test_corsa_edit_with_updates_shows_each_updates_filled_old_answers_before_it_trains(tmp_path, capsys):
    import json

    from corsa.cli import main
    from corsa.testing import save_tiny_llama

    model = str(save_tiny_llama(tmp_path / "model", seed=0))
    edits = tmp_path / "e.jsonl"
    edits.write_text("".join(json.dumps({"prompt": f"The capital of X{i} is", "target_new": f"Y{i}bb"}) + "\n"
                             for i in range(2)))
    assert main(["edit", "--model", model, "--edits", str(edits), "--out", str(tmp_path / "run"), "--epochs", "1",
                 "--updates", "2", "--quiet", "--no-check"]) == 0
    out = capsys.readouterr().out
    for k in (1, 2):
        stored = json.loads((tmp_path / "run" / f"update-{k}" / "edits.jsonl").read_text())
        start = out.index(f"update {k}/2: 1 edits")
        trained = out.index(f"update {k}/2: ", start + 1)
        # the update's own table, between its announcement and its training's report, with the y⁻ it trained on
        table = out[start:trained]
        assert "old answer y⁻ of 1 edits" in table and stored["id"] in table
        assert " ".join(stored["target_old"].split())[:40] in table
