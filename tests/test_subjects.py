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
