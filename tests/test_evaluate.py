"""evaluate(): one generation pass, one teacher-forced pass, numbers that agree with the primitives."""

from dataclasses import replace

import pytest

from corsa.metrics import contains

from corsa import ConfigError, Editor
from corsa import evaluate as E
from corsa.evaluate import EvalSettings, evaluate, summarise
from corsa.prompts import encode_edits
from corsa.records import Edit, Probe
from corsa.scoring import margins
from corsa.testing import FAST



@pytest.fixture
def edits(toy_edits):
    """The toy edits; the first two share a multi-hop question, as the edits of an MQuAKE case do."""
    shared = (Probe("Which city is the capital of the country next to 0?", "City0", ("C0",)),)
    return [replace(e, portability=shared) if i < 2 else e for i, e in enumerate(toy_edits)]


def test_base_evaluation_is_its_own_locality_reference(tiny, edits):
    editor = Editor(tiny, **FAST)
    result = evaluate(editor, edits, base=True)
    m = result["metrics"]
    assert m["generated/locality"] == 1.0
    assert set(result["base_answers"]) == {p.prompt for e in edits for p in e.locality}
    assert result["counts"] == {"edits": 6, "margins": 6, "paraphrases": 6, "locality_probes": 6,
                                "locality_gold": 6, "portability_questions": 1, "subject_questions": 0}
    assert all(key.startswith(("generated/", "teacher_forced/")) for key in m)
    assert result["protocol"]["generated"]["decoding"] == "greedy"
    for key in ("generated/reliability", "generated/generality", "generated/locality_gold",
                "generated/portability", "teacher_forced/efficacy", "teacher_forced/locality"):
        assert 0.0 <= m[key] <= 1.0


def test_a_fresh_adapter_changes_nothing(tiny, edits):
    editor = Editor(tiny, **FAST)  # LoRA B = 0: θ+φ = θ
    base = evaluate(editor, edits, base=True)
    edited = evaluate(editor, edits, base_answers=base["base_answers"])
    assert edited["metrics"]["generated/locality"] == 1.0
    for key, value in base["metrics"].items():
        assert edited["metrics"][key] == pytest.approx(value, abs=1e-4), key


def test_one_generation_pass_over_every_distinct_prompt(tiny, edits, monkeypatch):
    editor = Editor(tiny, **FAST)
    base = evaluate(editor, edits, base=True)
    calls, scored = [], []
    real_generate, real_score = E.generate, E.score_pairs
    monkeypatch.setattr(E, "generate", lambda m, f, prompts, *a, **k: calls.append(list(prompts))
                        or real_generate(m, f, prompts, *a, **k))
    monkeypatch.setattr(E, "score_pairs", lambda m, f, pairs, *a, **k: scored.append(len(pairs))
                        or real_score(m, f, pairs, *a, **k))
    evaluate(editor, edits, base_answers=base["base_answers"])
    assert len(calls) == 1 and len(scored) == 1
    expected = {p for e in edits for p in (e.prompt, *e.paraphrases, *(q.prompt for q in e.portability),
                                            *(q.prompt for q in e.locality))}
    assert sorted(calls[0]) == sorted(expected)  # the shared multi-hop question once
    assert scored[0] == 6 * 2 + 6 * 2 + 6 * 2    # margins on prompts, paraphrases, locality probes
    # without the cache, the unedited answers are generated once more, adapter disabled
    calls.clear()
    evaluate(editor, edits)
    assert len(calls) == 2 and len(calls[1]) == 6


def test_margins_are_the_scoring_margins(tiny, edits):
    editor = Editor(tiny, **FAST)
    editor.update(edits)
    result = evaluate(editor, edits)
    direct = margins(editor.model, editor.fmt, encode_edits(editor.fmt, edits, None, True)).tolist()
    assert [r["margin"] for r in result["records"]] == pytest.approx(direct, abs=1e-4)
    assert result["metrics"]["teacher_forced/efficacy"] == sum(m > 0 for m in direct) / len(direct)
    assert result["metrics"]["teacher_forced/margin_mean"] == pytest.approx(sum(direct) / len(direct), abs=1e-4)


def test_learnt_edits_show_in_generated_and_teacher_forced_numbers(tiny):
    # byte-level tiny tokenizer: a two-letter answer is two tokens the tiny model learns quickly
    edits = [Edit(id=f"e{i}", prompt=f"The code of item {i} is", target_new="QQ", target_old="AB",
                  paraphrases=(f"Item {i} has the code",)) for i in range(2)]
    editor = Editor(tiny, method="lora", epochs=60, batch_size=2, grad_accum=1, lr=1e-2, progress=False)
    before = evaluate(editor, edits, base=True, settings=EvalSettings(max_new_tokens=4))["metrics"]
    editor.update(edits)
    after = evaluate(editor, edits, settings=EvalSettings(max_new_tokens=4))["metrics"]
    assert before["generated/reliability"] == 0.0 and after["generated/reliability"] == 1.0
    assert after["teacher_forced/efficacy"] == 1.0
    # whether a random tiny model carries an edit to a rephrasing is luck; that the metric counts
    # the paraphrase answers that contain y⁺ is not
    answers = editor.ask([e.paraphrases[0] for e in edits], max_new_tokens=4)
    assert after["generated/generality"] == sum(contains(a, "QQ") for a in answers) / len(edits)
    assert after["generated/reliability_strict"] == 1.0
    assert after["teacher_forced/margin_mean"] > before["teacher_forced/margin_mean"] + 1
    assert after["generated/locality"] is None  # no probes: nothing to measure, not a perfect score


def test_sampling_draws_n_seeded_answers_and_keeps_locality_greedy(tiny, edits):
    editor = Editor(tiny, **FAST)
    settings = EvalSettings(sample=3, temperature=1.0, seed=7, max_new_tokens=4)
    first = evaluate(editor, edits[:2], base=True, settings=settings)
    again = evaluate(editor, edits[:2], base=True, settings=settings)
    rec = first["records"][0]
    assert isinstance(rec["answer"], list) and len(rec["answer"]) == 3
    assert isinstance(rec["paraphrases"][0]["answer"], list)
    assert isinstance(rec["locality"][0]["answer"], str)
    assert first["records"] == again["records"]
    assert "sampled: 3 answers" in first["protocol"]["generated"]["decoding"]
    assert first["metrics"]["generated/locality"] == 1.0


def test_summarise_hand_made_records():
    def rec(answer, new="Paris", old="Rome", paraphrases=(), locality=(), portability=(), margin=1.0):
        return {"id": "x", "prompt": "p", "target_new": new, "target_old": old, "answer": answer, "margin": margin,
                "paraphrases": [{"prompt": "q", "answer": a, "margin": m} for a, m in paraphrases],
                "locality": [{"prompt": "l", "gold": g, "aliases": [], "answer": a, "base_answer": b, "margin": m}
                             for a, b, g, m in locality],
                "portability": [{"prompt": q, "gold": g, "aliases": ["Lutetia"], "answer": a} for q, g, a in portability]}

    shared = ("Capital of the neighbour?", "Paris", "lutetia")
    records = [
        rec("Paris, not Rome", paraphrases=[("paris", 2.0), ("", -1.0)],
            locality=[("Blue.", "blue", "blue", 3.0), ("red", "green", None, None)], portability=[shared]),
        rec("", margin=-0.5, portability=[shared]),
        rec("  PARIS ", old=None, margin=None, paraphrases=[("Rome", None)]),
    ]
    m = summarise(records)
    assert m["generated/reliability"] == pytest.approx(2 / 3)
    assert m["generated/reliability_strict"] == pytest.approx(1 / 3)  # the first mentions both
    assert m["generated/generality"] == pytest.approx(1 / 3)
    assert m["generated/locality"] == 0.5
    assert m["generated/locality_gold"] == 1.0         # one probe has a gold answer
    assert m["generated/portability"] == 1.0           # the shared question counts once, via its alias
    assert m["teacher_forced/efficacy"] == 0.5         # margins 1.0 and −0.5; None is skipped
    assert m["teacher_forced/generality"] == 0.5
    assert m["teacher_forced/locality"] == 1.0
    assert E.counts(records)["portability_questions"] == 1
    assert m["generated/crossover"] == 0.0             # every y⁺ here is Paris: nothing to cross into
    assert summarise(records, pool=["Paris", "Rome", "Milan"])["generated/crossover"] == 0.0
    crossed = [rec("Milan", new="Paris"), rec("Milan", new="Milan"), rec("Oslo", new="Rome")]
    assert summarise(crossed)["generated/crossover"] == pytest.approx(1 / 3)
    assert summarise(crossed[:1], pool=["Paris"])["generated/crossover"] == 0.0  # Milan not edited here
    empty = summarise([])
    assert all(v is None for v in empty.values())


def test_a_bare_model_needs_the_unedited_answers(tiny, edits):
    model, tok = tiny
    from corsa.prompts import PromptFormat

    fmt = PromptFormat(tok)
    with pytest.raises(ConfigError, match="base_answers"):
        evaluate(model, edits, fmt=fmt)
    with pytest.raises(ConfigError, match="fmt"):
        evaluate(model, edits)
    base = evaluate(model, edits[:1], fmt=fmt, base=True)
    assert evaluate(model, edits[:1], fmt=fmt, base_answers=base["base_answers"])["metrics"]["generated/locality"] == 1.0


def test_edits_without_old_answer_have_no_margin(tiny, edits):
    editor = Editor(tiny, **FAST)
    result = evaluate(editor, [replace(edits[0], target_old=None)], base=True)
    assert result["records"][0]["margin"] is None
    assert result["metrics"]["teacher_forced/efficacy"] is None
    assert result["counts"]["margins"] == 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(sample=-1), "sample"), (dict(sample=2, temperature=0.0), "temperature"),
    (dict(max_new_tokens=0), "max_new_tokens"), (dict(batch_size=0), "batch size")])
def test_invalid_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        EvalSettings(**kwargs)


def test_summarise_subject_questions_by_hand():
    def rec(new, asked):
        return {"id": "x", "prompt": "p", "target_new": new, "target_old": None, "answer": new, "margin": None,
                "paraphrases": [], "locality": [], "portability": [],
                "subject": [{"prompt": f"q{i}", "answer": a, "base_answer": b, "kl": k}
                            for i, (a, b, k) in enumerate(asked)]}

    base = "Sven Wollter is a Swedish actor and director."   # 8 words: 4 keep the manner
    records = [rec("Norway", [("Norway", base, 2.0), ("Sven Wollter is a Norwegian actor.", base, 0.5),
                              ("Dutch", base, None)]),
               rec("Dutch", [(base, base, 0.0)])]
    m = summarise(records)
    assert m["generated/subject_locality"] == 0.5           # the sentence and the unchanged answer
    assert m["generated/subject_exact"] == 0.25
    assert m["generated/hijack"] == 0.5                     # "Norway" (its own) and "Dutch" (another edit's)
    assert m["generated/mention"] == 0.25                   # "Norway" alone ("Norwegian" is another word)
    assert m["teacher_forced/subject_kl"] == pytest.approx(2.5 / 3)  # a None (no unedited answer) skipped
    assert summarise(records, pool=["Norway"])["generated/hijack"] == 0.25
    assert E.counts(records)["subject_questions"] == 4


def test_questions_about_the_subject_are_asked_and_their_kl_is_the_hand_computed_one(tiny):
    import torch

    from corsa import subjects
    from corsa.prompts import collate, pad_id
    from corsa.scoring import answer_logits

    edits = [Edit(id=f"s{i}", prompt=f"Obj{i} is made of", target_new=f"Stone{i}", target_old=f"Wood{i}",
                  subject=f"Obj{i}") for i in range(2)]
    editor = Editor(tiny, template="raw", **FAST)  # raw: the tiny chat model ends its turn at once
    base = evaluate(editor, edits, base=True)
    asked = [q for e in edits for q in subjects.probes(e)]
    assert set(base["base_answers"]) == set(asked) and len(asked) == 2 * len(subjects.ASKED)
    m = base["metrics"]
    assert (m["generated/subject_locality"], m["generated/subject_exact"], m["teacher_forced/subject_kl"]) == (1, 1, 0)
    with torch.no_grad():  # move the adapter away from the base model
        for name, p in editor.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.5)
    edited = evaluate(editor, edits, base_answers=base["base_answers"])
    asked_back = [q for r in edited["records"] for q in r["subject"]]
    assert [q["prompt"] for q in asked_back] == asked
    assert all(q["kl"] is None for q in asked_back if not q["base_answer"].strip())
    q = next(q for q in asked_back if q["base_answer"].strip())     # the tiny model answers some with nothing
    fmt, model = editor.fmt, editor.model
    b = collate([(fmt.prompt_ids(q["prompt"]), fmt.answer_ids(q["base_answer"], eos=False))], pad_id(fmt.tokenizer))
    with torch.no_grad():
        logp = torch.log_softmax(answer_logits(model, b).float(), -1)[0]
        with model.disable_adapter():
            ref = torch.log_softmax(answer_logits(model, b).float(), -1)[0]
    by_hand = sum((ref[t].exp() * (ref[t] - logp[t])).sum().item() for t in range(ref.shape[0])) / ref.shape[0]
    assert q["kl"] == pytest.approx(by_hand, rel=1e-4) and q["kl"] > 0
    assert q["base_answer"] == base["base_answers"][q["prompt"]]


def test_the_subject_kl_of_a_question_is_its_kl_alone_in_a_batch_of_others_and_by_a_plain_forward(tiny):
    import torch

    from corsa import subjects

    edits = [Edit(id=f"s{i}", prompt=f"Obj{i} is made of", target_new=f"Stone{i}", target_old=f"Wood{i}",
                  subject="Obj" + "x" * (3 * i) + str(i)) for i in range(3)]   # subjects of three lengths
    editor = Editor(tiny, template="raw", **FAST)
    base = evaluate(editor, edits, base=True)
    with torch.no_grad():
        for name, p in editor.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.5)
    together = evaluate(editor, edits, base_answers=base["base_answers"])
    q = together["records"][2]["subject"][1]
    alone = evaluate(editor, edits[2:], base_answers=base["base_answers"])["records"][0]["subject"][1]
    assert q["kl"] == pytest.approx(alone["kl"], rel=1e-4)
    # by hand: one unpadded forward of prompt + unedited answer, with and without the adapter
    fmt, model = editor.fmt, editor.model
    prompt, answer = fmt.prompt_ids(q["prompt"]), fmt.answer_ids(q["base_answer"], eos=False)
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        with model.disable_adapter():
            ref = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    rows = range(len(prompt) - 1, len(prompt) + len(answer) - 1)          # the positions predicting the answer
    by_hand = sum((ref[t].exp() * (ref[t] - logp[t])).sum().item() for t in rows) / len(answer)
    assert q["kl"] == pytest.approx(by_hand, rel=1e-4) and q["prompt"] == subjects.ASKED[1].format(subject="Objxxxxxx2")


def test_an_older_cache_of_unedited_answers_is_completed_and_never_replaced(tiny, monkeypatch):
    edits = [Edit(id="s0", prompt="Obj0 is made of", target_new="Stone", target_old="Wood", subject="Obj0",
                  locality=(Probe("The colour of Obj9 is"),))]
    editor = Editor(tiny, template="raw", **FAST)
    old_cache = {"The colour of Obj9 is": "kept as it was"}           # a bench folder from before the subjects
    asked = []
    real = E._unedited
    monkeypatch.setattr(E, "_unedited", lambda m, f, prompts, *a: asked.extend(prompts) or real(m, f, prompts, *a))
    result = evaluate(editor, edits, base_answers=old_cache)
    assert sorted(asked) == sorted(q for q in E.subjects.probes(edits[0]))
    assert result["base_answers"]["The colour of Obj9 is"] == "kept as it was"
