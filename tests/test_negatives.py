"""Negatives beyond y⁻ (corsa.negatives): interference, rivals and the online answer, from the
pure parts against hand-computed values to what reaches the DPO term on the tiny model.
"""

import math

import pytest
import torch

from corsa import Editor
from corsa import negatives as N
from corsa.config import EditConfig
from corsa.engine import refresh_online_negatives
from corsa.step import compute_reference
from corsa.objectives import dpo_loss, is_greedy
from corsa.prompts import encode_edits
from corsa.scoring import next_token_logprobs
from corsa.records import Edit
from corsa.testing import FAST


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
    import corsa.step as step

    seen = []
    real = step.collate_shared

    def spy(prompts, answers, pad):
        seen.append([len(a) for a in answers])
        return real(prompts, answers, pad)

    monkeypatch.setattr(step, "collate_shared", spy)
    edits = [Edit(f"e{i}", f"Person {i} works in", f"City{i}", f"Town{i}", subject=f"Person {i}") for i in range(3)]
    Editor(tiny, method="corsa", negatives="interference", edit_stop=False, **FAST).update(edits)
    # each prompt scores y⁺, y⁻ and the two other edits' y⁺ (same template "{} works in")
    assert seen and all(n == [4] * len(n) for n in seen)
    seen.clear()
    Editor(tiny, method="corsa", edit_stop=False, **FAST).update(edits)
    assert all(n == [2] * len(n) for n in seen)


def test_rival_negatives_reach_the_dpo_term_ranked_by_the_base_model(tiny, monkeypatch):
    import corsa.scoring as scoring
    import corsa.step as step

    seen = []
    real = step.collate_shared

    def spy(prompts, answers, pad):
        seen.append(answers)
        return real(prompts, answers, pad)

    monkeypatch.setattr(step, "collate_shared", spy)
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
    monkeypatch.setattr(scoring, "next_token_logprobs", lambda *a, **k: calls.append(1) or [])
    editor.update(edits)
    assert calls == []


def test_no_room_means_no_interference_negative(tiny, monkeypatch):
    import corsa.step as step

    seen = []
    real = step.collate_shared
    monkeypatch.setattr(step, "collate_shared", lambda p, a, pad: seen.append([len(x) for x in a]) or real(p, a, pad))
    edits = [Edit(f"e{i}", f"Person {i} works in", f"City{i}", f"Town{i}", subject=f"Person {i}") for i in range(3)]
    Editor(tiny, method="corsa", negatives="interference", max_negatives=0, edit_stop=False, **FAST).update(edits)
    assert seen and all(n == [2] * len(n) for n in seen)
