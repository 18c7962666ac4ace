"""Questions about an edited subject: the evaluation's and training's wordings never meet."""

from corsa import subjects
from corsa.metrics import normalise
from corsa.records import Edit


def test_the_two_sets_of_wordings_are_disjoint_and_name_the_subject_once():
    asked = {normalise(t) for t in subjects.ASKED}
    kept = {normalise(t) for t in subjects.KEPT}
    assert asked and kept and not asked & kept
    for t in subjects.ASKED + subjects.KEPT:
        assert t.count("{subject}") == 1


def test_probes_fill_the_subject_and_skip_questions_that_ask_the_fact():
    e = Edit("e", "What is Sven Wollter?", "Norway", "Sweden", subject="Sven Wollter",
             paraphrases=("Tell me one fact about sven wollter",))
    got = subjects.probes(e)
    assert got == [t.format(subject="Sven Wollter") for t in subjects.ASKED[2:]]
    assert subjects.probes(Edit("f", "The capital of X is", "Y")) == []      # no subject, no question
    assert subjects.questions("  ", subjects.ASKED) == []


import pytest  # noqa: E402

from corsa import ConfigError, Editor  # noqa: E402
from corsa import preserve  # noqa: E402
from corsa.config import EditConfig  # noqa: E402


def _edits():
    return [Edit(f"e{i}", f"Obj{i} is made of", f"Stone{i}", f"Wood{i}", subject=f"Obj{i}",
                 paraphrases=(f"The material of Obj{i} is",)) for i in range(3)]


def test_keep_subject_questions_are_kept_wordings_seeded_by_the_edit():
    edits = _edits()
    got = preserve.subject_prompts(edits, 2)
    assert len(got) == 6
    kept = {t.format(subject=f"Obj{i}") for t in subjects.KEPT for i in range(3)}
    assert set(got) <= kept
    assert preserve.subject_prompts(edits[1:], 2) == got[2:]      # an edit keeps its questions, whoever is beside it
    assert preserve.subject_prompts([Edit("x", "The capital of X is", "Y")], 2) == []


def test_the_anchors_hold_questions_about_every_subject_and_never_an_evaluation_probe(tiny):
    edits = _edits()
    probes = {normalise(q) for e in edits for q in subjects.probes(e)} | {normalise(e.prompt) for e in edits}
    scoped = Editor(tiny, method="corsa-lifelong", template="raw", preserve=1.0, keep_subject=3, progress=False)
    anchors = scoped.lifelong.anchors([], edits, scoped=True)
    assert sorted(anchors.prompts) == sorted(preserve.subject_prompts(edits, 3))   # generic ones out of scope
    assert not {normalise(p) for p in anchors.prompts} & probes
    everywhere = Editor(tiny, method="lora", template="raw", preserve=1.0, keep_subject=3, progress=False)
    prompts = everywhere.lifelong.anchors([], edits).prompts
    assert set(preserve.subject_prompts(edits, 3)) <= set(prompts)
    assert set(preserve.read_anchors()) & set(prompts)                             # the generic set too


def test_an_update_trains_on_them(tiny, monkeypatch):
    from corsa import api

    seen = {}
    real = api.train_update

    def spy(*args, **kwargs):
        seen["anchors"] = kwargs["anchors"]
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "train_update", spy)
    editor = Editor(tiny, method="corsa-lifelong", template="raw", preserve=1.0, keep_subject=2, epochs=1,
                    batch_size=3, progress=False)
    editor.update(_edits())
    assert sorted(seen["anchors"].prompts) == sorted(preserve.subject_prompts(_edits(), 2))
    assert all(len(answer) > 0 for _, answer in seen["anchors"].pairs)


def test_keep_earlier_keeps_the_questions_of_replayed_edits_at_rest_in_an_order_seeded_by_the_update(tiny):
    from corsa.lifelong import held_key

    history = [Edit(f"e{i}", f"Obj{i} is made of", f"Stone{i}", f"Wood{i}", subject=f"Obj{i}",
                    paraphrases=(f"The material of Obj{i} is",)) for i in range(7)]
    history[6] = Edit("e6", "The capital of X is", "Y", "Z")                  # no subject: no questions
    again = Edit("n1", "Obj4 is made of", "Glass", "Wood4", subject="Obj4")    # edits Obj4's prompt again
    twin = Edit("n2", "Obj5 is found in", "Peru", "Chile", subject="Obj5")     # Obj5's questions are its own now
    new = [Edit("n0", "Obj9 is made of", "Iron", "Wood9", subject="Obj9"), again, twin]
    editor = Editor(tiny, method="corsa-lifelong", template="raw", keep_earlier=2, progress=False)
    replay = editor.lifelong.replay_set(history, new)
    assert [e.id for e in replay] == ["e0", "e1", "e2", "e3", "e5", "e6"]     # e4 superseded
    trains = [*new, history[1]]                                              # e1 was lost: it trains
    picked = editor.lifelong.earlier_subjects(replay, trains, index=2)
    assert len(picked) == 2 and {e.id for e in picked} <= {"e0", "e2", "e3"}
    assert picked == editor.lifelong.earlier_subjects(replay, trains, index=2)      # seeded by the update
    assert len({tuple(e.id for e in editor.lifelong.earlier_subjects(replay, trains, index=k))
                for k in range(8)}) > 1                                      # another update, another sample
    # which edits hold moves no other edit in or out: the order depends on the update alone
    kept = [e for e in picked if e.id != "e0"]
    assert editor.lifelong.earlier_subjects(replay, trains + [history[0]], index=2)[:len(kept)] == kept
    # in the plan: every earlier edit held at the last test but e1, so the new edits and e1 train
    editor.lifelong._held = {held_key(e): e.id != "e1" for e in history}
    asked = preserve.subject_prompts([history[0]], 3)[0]                     # one of e0's kept questions ...
    history[0] = Edit("e0", "Obj0 is made of", "Stone0", "Wood0", subject="Obj0", paraphrases=(asked,))  # ... a probe
    editor = Editor(tiny, method="corsa-lifelong", template="raw", keep_earlier=3, progress=False)
    editor.lifelong._held = {held_key(e): e.id != "e1" for e in history}
    plan = editor.lifelong.plan(history, new, 2, scoped=True)
    assert [e.id for e in plan.replay if not plan.replay_held[plan.replay.index(e)]] == ["e1"]
    earlier = editor.lifelong.earlier_subjects(plan.replay, [*new, history[1]], 2)
    assert {e.id for e in earlier} == {"e0", "e2", "e3"}
    want = set(preserve.subject_prompts([*new, history[1], *earlier], 3))
    assert asked in want and set(plan.anchors.prompts) == want - {asked}
    probes = {normalise(q) for e in history + new for q in [*subjects.probes(e), e.prompt, *e.paraphrases]}
    assert not {normalise(p) for p in plan.anchors.prompts} & probes
    off = Editor(tiny, method="corsa-lifelong", template="raw", progress=False)
    assert off.lifelong.earlier_subjects(replay, trains, index=2) == []


def test_corsa_lifelong_without_the_preservation_term_drops_its_subject_questions_too():
    cfg = EditConfig(method="corsa-lifelong", preserve=0.0)        # the row's keep_subject 3 goes with it
    assert cfg.value("preserve") == 0 and cfg.value("keep_subject") == 3


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="corsa", keep_subject=2), "--preserve"),
    (dict(method="corsa", preserve=1.0, keep_subject=99), "keep_subject"),
    (dict(method="rome", keep_subject=2), "does not"),
    (dict(method="corsa", preserve=1.0, keep_earlier=2), "--keep-subject k"),
    (dict(method="corsa-lifelong", keep_subject=0, keep_earlier=2), "--keep-subject k"),
    (dict(method="memit", keep_earlier=2), "does not"),
    (dict(method="corsa-lifelong", preserve=0.0, keep_earlier=2), "--preserve"),
    (dict(method="corsa-lifelong", replay="lost", keep_earlier=2), "--replay all"),
])
def test_keep_subject_is_refused_where_it_means_nothing(kwargs, message):
    from corsa.config import EditConfig

    with pytest.raises(ConfigError, match=message):
        EditConfig(**kwargs)


def test_corsa_edit_asks_about_the_edited_subjects_and_warns_when_answers_change(tmp_path, capsys):
    import json

    from corsa.cli import main
    from corsa.testing import save_tiny_llama

    model = str(save_tiny_llama(tmp_path / "model", seed=0))
    edits = tmp_path / "e.jsonl"
    edits.write_text(json.dumps({"prompt": "Obj1 is made of", "target_new": "Ybbb", "target_old": "Z",
                                 "subject": "Obj1"}) + "\n")
    # raw: the tiny chat model ends its turn at once, so there would be no manner to keep or lose
    assert main(["edit", "--model", model, "--edits", str(edits), "--out", str(tmp_path / "weak"), "--epochs", "1",
                 "--lr", "1e-6", "--quiet", "--template", "raw"]) == 0
    captured = capsys.readouterr()
    assert "question about an edited subject" in captured.out and "What is Obj1?" in captured.out
    assert "1/1 answered in the unedited model's manner, 0/1 with a new answer alone" in captured.out
    assert "questions about an edited subject get" not in captured.err


def test_show_subjects_counts_cut_short_answers_and_new_answers_alone(capsys):
    from corsa.cli.edit import show_subjects

    class Asked:  # the unedited model writes sentences; the edited one answers one word
        config = EditConfig(method="corsa")

        def ask(self, prompts, base=False):
            return [f"{p[8:-1]} is a Swedish actor and director." if base else "Norway" if "Sven" in p else
                    f"{p[8:-1]} is a Swedish actor and director." for p in prompts]

    edits = [Edit("a", "Sven Wollter is a citizen of", "Norway", "Sweden", subject="Sven Wollter"),
             Edit("b", "Max Weber works in", "physics", "sociology", subject="Max Weber"),
             Edit("c", "The capital of X is", "Y")]                     # no subject: no question
    assert show_subjects(Asked(), edits) == (2, 1, 1)
    captured = capsys.readouterr()
    assert "What is Sven Wollter?" in captured.out and "y⁺ ALONE" in captured.out
    assert "1/2 answered in the unedited model's manner, 1/2 with a new answer alone" in captured.out
    assert "of 2 questions about an edited subject, 1 get a cut-short answer and 1 an edit's y⁺ alone" in captured.err
    assert "--keep-subject" in captured.err
    assert show_subjects(Asked(), edits[2:]) == (0, 0, 0)

