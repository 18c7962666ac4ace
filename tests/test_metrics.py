"""The metric functions of method.md §5–6 on hand-made cases."""

import math

import pytest

from corsa import metrics as M


@pytest.mark.parametrize("text, expected", [
    ("  Paris. ", "paris"),
    ("PARIS", "paris"),
    ("New\n  York\tCity", "new york city"),
    ('"Rome!"', "rome"),
    ("C++", "c++"),            # only sentence punctuation is stripped
    ("", ""),
    (None, ""),
    ("ﬁne", "fine"),           # NFKC ligature
])
def test_normalise(text, expected):
    assert M.normalise(text) == expected


@pytest.mark.parametrize("answer, target, expected", [
    ("The capital is Paris.", "Paris", True),
    ("the capital is   PARIS", "paris ", True),           # case and whitespace
    ("It is in New\nYork.", "New York", True),
    ("Romeo and Juliet", "Rome", False),                  # whole words
    ("It happened in 1995", "1", False),
    ("The answer is 1.", "1", True),
    ("Made by Apple, Inc.", "Apple Inc.", False),         # the comma is part of the answer
    ("He speaks English.", "english", True),
    ("She codes in C++ daily", "C++", True),
    ("首都是东京。", "东京", True),                           # no word boundaries in CJK
    ("", "Paris", False),                                # empty answer mentions nothing
    ("Paris", "", False),                                # an empty target is never mentioned
    ("Paris", "  ...  ", False),
])
def test_contains(answer, target, expected):
    assert M.contains(answer, target) is expected


def test_contains_substring_mode_is_the_releases_any_mention():
    assert M.contains("Romeo", "Rome", whole_words=False)
    assert not M.contains("Romeo", "Rome")


def test_both_answers_mentioned_pass_plain_and_fail_strict():
    answer = "Some say Rome, but it is Paris."
    assert M.hit(answer, ["Paris"], ["Rome"])
    assert not M.hit(answer, ["Paris"], ["Rome"], strict=True)
    assert M.reliability([answer], ["Paris"], ["Rome"]) == 1.0
    assert M.reliability([answer], ["Paris"], ["Rome"], strict=True) == 0.0


def test_strict_without_old_answer_only_needs_the_new_one():
    assert M.reliability(["Paris"], ["Paris"], [None], strict=True) == 1.0
    assert M.reliability(["Paris"], ["Paris"], strict=True) == 1.0


def test_reliability_fractions_and_empty_inputs():
    answers = ["Paris", "", "London", "paris!"]
    assert M.reliability(answers, ["Paris"] * 4, ["London"] * 4) == 0.5
    assert M.reliability(answers, ["Paris"] * 4, ["London"] * 4, strict=True) == 0.5
    assert M.reliability([], [], []) is None
    with pytest.raises(ValueError, match="3 answers"):
        M.reliability(["a", "b", "c"], ["x"])


def test_aliases_count_as_the_answer():
    assert M.hit("It is the USA", ["United States", "USA"])
    assert M.hit_rate("nothing", ["United States", "USA"]) == 0.0


def test_sampled_answers_score_the_fraction_of_samples():
    samples = ["Paris", "Rome", "Paris and Rome", ""]
    assert M.hit_rate(samples, ["Paris"], ["Rome"]) == 0.5
    assert M.hit_rate(samples, ["Paris"], ["Rome"], strict=True) == 0.25
    assert M.hit_rate([], ["Paris"]) == 0.0
    assert M.reliability([samples, "Paris"], ["Paris", "Paris"], ["Rome", "Rome"]) == pytest.approx(0.75)


def test_locality_compares_normalised_answers():
    assert M.unchanged("Red.", " red")
    assert not M.unchanged("red", "blue")
    assert M.unchanged("", "")
    assert M.locality(["Red.", "blue", ""], ["red", "green", ""]) == pytest.approx(2 / 3)
    assert M.locality([], []) is None
    with pytest.raises(ValueError):
        M.locality(["a"], [])


def test_crossover_counts_answers_taken_from_another_edit():
    news = ["Paris", "Milan", "jazz", "Rome"]
    answers = ["milan", "Milan and Paris", "I like rock", "The city of Rome"]
    # 1: another edit's answer (Milan) and not its own; 2: both, so it answers its own; 3: none; 4: its own
    assert M.crossover(answers, news, news) == pytest.approx(1 / 4)
    # an answer from outside the pool is a plain miss, not a crossover
    assert M.crossover(["Berlin"], ["Paris"], ["Paris", "Milan"]) == 0.0
    # two edits with the same new answer do not cross into each other
    assert M.crossover(["paris"], ["Paris"], ["Paris", " PARIS "]) == 0.0
    assert M.crossover([], [], news) is None
    with pytest.raises(ValueError):
        M.crossover(["a"], [], news)


def test_lost_edits_are_split_by_where_the_answer_went():
    news = ["Paris", "Milan", "jazz", "Rome", "Oslo"]
    olds = ["Berlin", "Vienna", "opera", None, "Bergen"]
    answers = ["Paris", "Vienna, I think", "Paris", "Lyon", "Bergen or Milan"]
    c = M.lost_edits(answers, news, olds, news)
    # Paris kept; Vienna is Milan's y⁻; jazz → Paris (another edit); Rome → Lyon (elsewhere, no y⁻);
    # Oslo → "Bergen or Milan": y⁻ is mentioned, so the prior counts first
    assert c == {"edits": 5, "kept": 1, "lost": 4, "to_old_answer": 2, "to_another_edit": 1, "elsewhere": 1}
    assert c["lost"] == c["to_old_answer"] + c["to_another_edit"] + c["elsewhere"]
    assert M.lost_edits([], [], [], news)["edits"] == 0
    # with `took`: an edit that never answered y⁺ after its own update is not lost, it never took
    t = M.lost_edits(answers, news, olds, news, took=[True, False, True, True, False])
    # Milan (→ its y⁻) and Oslo never took; jazz (→ Paris) and Rome (→ Lyon) took and were lost
    assert t == {"edits": 5, "kept": 1, "never_took": 2, "lost": 2, "to_old_answer": 0, "to_another_edit": 1,
                 "elsewhere": 1}
    with pytest.raises(ValueError):
        M.lost_edits(["a"], ["b"], [], news)


def test_efficacy_is_the_sign_of_the_margin_and_a_tie_fails():
    assert M.efficacy([1.0, -0.5, 0.0, 2.0]) == 0.5
    assert M.efficacy([]) is None


def test_margin_stats_by_hand():
    s = M.margin_stats([-2.0, 0.0, 1.0, 3.0, 8.0])
    assert s["mean"] == pytest.approx(2.0)
    assert s["min"] == -2.0 and s["max"] == 8.0
    assert s["q50"] == 1.0
    assert s["q25"] == 0.0 and s["q75"] == 3.0
    assert s["q10"] == pytest.approx(-1.2)      # linear: -2 + 0.4·(0 − (−2))
    assert s["q90"] == pytest.approx(6.0)       # 3 + 0.6·(8 − 3)
    assert s["std"] == pytest.approx(math.sqrt((16 + 4 + 1 + 1 + 36) / 5))
    assert set(M.margin_stats([]).values()) == {None}


def test_retention_arithmetic_on_a_hand_written_matrix():
    R = [[0.9],
         [0.6, 1.0],
         [0.5, 0.7, 0.8]]
    s = M.retention_summary(R)
    assert s["update_efficacy"] == pytest.approx((0.9 + 1.0 + 0.8) / 3)
    assert s["retention_final"] == pytest.approx((0.5 + 0.7) / 2)
    assert s["forgetting"] == pytest.approx(((0.9 - 0.5) + (1.0 - 0.7)) / 2)


def test_retention_with_one_update_has_nothing_to_forget():
    assert M.retention_summary([[0.75]]) == {"update_efficacy": 0.75, "retention_final": None, "forgetting": None}


def test_forgetting_can_be_negative_when_later_updates_help():
    assert M.retention_summary([[0.5], [0.75, 1.0]])["forgetting"] == pytest.approx(-0.25)


@pytest.mark.parametrize("R, message", [
    ([], "empty"),
    ([[0.5, 0.5]], "row 1 has 2 values"),
    ([[0.5], [0.5]], "row 2 has 1 values"),
    ([[1.5]], "not a fraction"),
    ([[None]], "not a fraction"),
])
def test_malformed_retention_matrices_are_refused(R, message):
    with pytest.raises(ValueError, match=message):
        M.retention_summary(R)


def test_relative_forgetting_reduction():
    assert M.relative_forgetting_reduction(0.3, 0.4) == pytest.approx(0.25)
    assert M.relative_forgetting_reduction(0.4, 0.4) == 0.0
    assert M.relative_forgetting_reduction(0.5, 0.4) == pytest.approx(-0.25)   # worse than LoRA
    assert M.relative_forgetting_reduction(0.1, 0.0) is None                   # LoRA forgot nothing
    assert M.relative_forgetting_reduction(None, 0.4) is None
    assert M.relative_forgetting_reduction(0.1, None) is None


@pytest.mark.parametrize("text, expected", [
    ("physics\nphysics\nphysics", True),
    ("is a city. is a city. is a city.", True),          # a run of three words, three times
    ("physics physics", False),                          # twice is not a loop
    ("New York, New York", False),
    ("Sven Wollter is a Swedish actor and director.", False),
    ("", False),
])
def test_repeats(text, expected):
    assert M.repeats(text) is expected


def test_repeats_counts_runs_up_to_the_longest():
    six = "a b c d e f " * 3
    assert not M.repeats(six)                    # longest 5 by default
    assert M.repeats(six, longest=6)


@pytest.mark.parametrize("answer, base, expected", [
    ("Norway", "Sven Wollter is a German-American actor and director.", False),        # 1 word of 8
    ("Sven Wollter is a Norwegian actor.", "Sven Wollter is a German-American actor and director.", True),  # 6 ≥ 4
    ("Sven Wollter is an", "Sven Wollter is a German-American actor and director.", True),     # 4 = ⌈8/2⌉
    ("Sven Wollter is", "Sven Wollter is a German-American actor and director.", False),       # 3 < 4
    ("physics physics physics physics", "He was a chemist who studied air", False),         # a loop
    ("la la la la la", "la la la la", True),                                                 # it looped before too
    ("Paris", "Paris", True),                                                                # a one-word model stays one
    ("", "", True),
])
def test_keeps_manner(answer, base, expected):
    assert M.keeps_manner(answer, base) is expected


@pytest.mark.parametrize("answer, expected", [
    ("Norway", True), ("norway.", True), (" Dutch ", True),       # its own y⁺ or another edit's, alone
    ("Sven Wollter is a Norwegian actor", False), ("Norway and Sweden", False), ("", False),
])
def test_hijacked(answer, expected):
    assert M.hijacked(answer, ["Norway", "Dutch"]) is expected


@pytest.mark.parametrize("answer, base, expected", [
    ("He lives in Norway", "He lives in Sweden", True),
    ("He lives in Norway", "He moved from Norway to Sweden", False),   # the unedited answer named it already
    ("He lives in Sweden", "He lives in Sweden", False),
])
def test_new_mention(answer, base, expected):
    assert M.new_mention(answer, base, "Norway") is expected
