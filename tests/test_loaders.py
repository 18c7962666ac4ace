"""corsa.loaders: every format on the real benchmark files and on hand-written fixtures, the
round trip through the plain format, every bad input, and a fuzz test that nothing but
DataError ever escapes."""

from __future__ import annotations

import json
import logging
import tempfile
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corsa.errors import ConfigError, DataError
from corsa.loaders import FORMATS, detect_format, load_edits, save_edits_jsonl
from corsa.records import Edit, Probe

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
COUNTERFACT = "counterfact/easyedit/counterfact-edit.json"
ZSRE = "zsre/zsre_mend_train-1k.json"
MQUAKE = "mquake/MQuAKE-hard.json"
ARENA = "codeupdatearena/arena.jsonl"


def data_file(name: str) -> Path:
    """A benchmark file from ../shared/data; its absence is a failure, not a skip."""
    path = DATA / name
    if not path.is_file():
        pytest.fail(f"benchmark file {path} is missing: these tests read the data folder beside the "
                    f"repository (../shared/data, described in its SOURCES.md)")
    return path


def raw(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assert_names(err: DataError, path: Path, record: int | None, field: str | None) -> None:
    """The error names the file, the record (by index, first in its label) and the field."""
    message = str(err)
    assert err.path == str(path) and f"file {path}" in message
    if record is None:
        assert err.record is None
    else:
        assert str(err.record).split(" ")[0] == str(record) and f"record {err.record}" in message
    assert err.field == field
    if field is not None:
        assert f"field '{field}'" in message


# ---------------------------------------------------------------- the real benchmark files

@pytest.fixture(scope="module")
def counterfact() -> list[Edit]:
    return load_edits(data_file(COUNTERFACT), on_invalid="skip")


def test_counterfact_easyedit(counterfact, caplog):
    path = data_file(COUNTERFACT)
    records = raw(path)
    assert len(records) == 10_000 and detect_format(records) == "counterfact-easyedit"
    assert counterfact[0] == Edit(
        id="cf-0", prompt="The mother tongue of Danielle Darrieux is", target_new="English", target_old="French",
        subject="Danielle Darrieux", paraphrases=("Where Danielle Darrieux is from, people speak the language of",),
        locality=(Probe("Michel Rocard is a native speaker of", "French"),),
        source="counterfact-easyedit:counterfact-edit.json")
    # 79 records ask a prompt that an earlier record gave a different new answer ("The twin city of
    # Tirana is" Shanghai, then Hamburg): the first answer is kept
    assert len(counterfact) == 10_000 - 79
    assert len({e.id for e in counterfact}) == len(counterfact)
    with caplog.at_level(logging.WARNING, logger="corsa.loaders"):
        load_edits(path, on_invalid="skip")
    assert "skipped 79 of 10000 records" in caplog.text


def test_counterfact_conflict_is_an_error_by_default():
    path = data_file(COUNTERFACT)
    with pytest.raises(DataError) as info:
        load_edits(path)
    assert_names(info.value, path, 1091, "prompt")
    assert "cf-2362" in str(info.value) and "record 452 (id cf-1004)" in str(info.value)
    assert "on_invalid='skip'" in str(info.value)
    assert len(load_edits(path, limit=1000)) == 1000  # the head before the first conflict loads as is


def test_zsre(caplog):
    path = data_file(ZSRE)
    records = raw(path)
    assert len(records) == 1_000 and detect_format(records) == "zsre"
    with caplog.at_level(logging.WARNING, logger="corsa.loaders"):
        edits = load_edits(path, on_invalid="skip")
    # 17 records whose alt equals answers[0] and 2 whose alt is empty cannot be trained
    assert len(edits) == 1_000 - 19 and "skipped 19 of 1000 records" in caplog.text
    assert edits[0] == Edit(
        id="zsre-0", prompt="What is the product made by UniFirst?", target_new="unmanned aircraft",
        target_old="uniform", subject="UniFirst", paraphrases=("What will be the product of UniFirst?",),
        locality=(Probe("John goodman's character in the big lebowski?", "Walter Sobchak"),),
        source="zsre:zsre_mend_train-1k.json")
    assert {"zsre-101", "zsre-534"}.isdisjoint(e.id for e in edits)
    with pytest.raises(DataError) as info:
        load_edits(path)
    assert_names(info.value, path, 101, "alt")
    assert "'Carabidae' is the old answer (answers[0])" in str(info.value)


def test_mquake_hard(caplog):
    path = data_file(MQUAKE)
    records = raw(path)
    assert len(records) == 429 and detect_format(records) == "mquake"
    assert sum(len(r["requested_rewrite"]) for r in records) == 1_716
    with caplog.at_level(logging.WARNING, logger="corsa.loaders"):
        edits = load_edits(path, on_invalid="skip")
    # two cases re-edit a prompt of an earlier case with another answer ("Portal was developed
    # by"); a bad case is dropped whole, with its four edits
    assert len(edits) == 1_716 - 2 * 4 and "skipped 2 of 429 records" in caplog.text
    aliases = ("ar", "Arabian language", "Arabic language")
    questions = tuple(Probe(q, "Arabic", aliases) for q in records[0]["questions"])
    assert edits[0] == Edit(
        id="mquake-7417-0", prompt="Hey Jude was performed by", target_new="Madonna", target_old="The Beatles",
        subject="Hey Jude", paraphrases=("Who performed Hey Jude?",), portability=questions,
        source="mquake:MQuAKE-hard.json")
    assert [e.id for e in edits[:4]] == [f"mquake-7417-{k}" for k in range(4)]
    assert edits[3].prompt == "The official language of Australia is" and edits[3].target_new == "Arabic"
    assert all(e.portability == questions for e in edits[:4])
    assert len(load_edits(path, limit=287 * 4)) == 287 * 4  # every case before the first conflict


def test_codeupdatearena():
    path = data_file(ARENA)
    records = raw(path)
    assert len(records) == 141 and detect_format(records) == "codeupdatearena"
    edits = load_edits(path)
    assert len(edits) == 577  # one edit per program-synthesis task
    first = edits[0]
    assert first.id == "cua-math.sin-modify-output-semantics-update-0-prog_syn-0"
    assert first.prompt.startswith("You are a STEM tutor") and "def calculate_sine_values(" in first.prompt
    assert "unit=" not in first.prompt and "radians" not in first.prompt  # no documentation of the update
    assert first.target_new.startswith("```python\n") and "unit='degrees'" in first.target_new
    assert first.subject == "math.sin" and first.target_old is None and first.source == "codeupdatearena:arena.jsonl"


def test_codeupdatearena_final_release_layout():
    path = Path(__file__).parent / "fixtures" / "arena-ungrouped.jsonl"
    assert detect_format(raw(path)) == "codeupdatearena-ungrouped"
    edits = load_edits(path)
    assert [e.subject for e in edits] == ["math.floor"] * 3 + ["math.isqrt"] * 3
    assert "math.int_sqrt(n)" in edits[3].target_new


def test_limit_counts_edits_not_records():
    edits = load_edits(data_file(MQUAKE), limit=6)
    assert [e.id for e in edits] == [*(f"mquake-7417-{k}" for k in range(4)), "mquake-7428-0", "mquake-7428-1"]


# ---------------------------------------------------------------- hand-written fixtures

def test_rome_counterfact_fixture():
    path = FIXTURES / "rome_counterfact.json"
    assert detect_format(raw(path)) == "counterfact-rome"
    first, second = load_edits(path)
    assert first == Edit(
        id="cf-0", prompt="The mother tongue of Danielle Darrieux is", target_new="English", target_old="French",
        subject="Danielle Darrieux",
        paraphrases=("Shayna does this and Yossel goes still and dies. Danielle Darrieux, a native",
                     "An album was recorded for Capitol Nashville but never released. "
                     "Danielle Darrieux spoke the language"),
        locality=(Probe("The mother tongue of Léon Blum is", "French"),
                  Probe("The native language of Montesquieu is", "French"),
                  Probe("Michel Rocard is a native speaker of", "French")),
        source="counterfact-rome:rome_counterfact.json")
    assert second.prompt == "The official religion of Edwin of Northumbria is" and second.target_old == "Christianity"
    assert all(p.answer == "Christianity" for p in second.locality)


def test_mquake_remastered_fixture():
    path = FIXTURES / "mquake_remastered.json"
    assert detect_format(raw(path)) == "mquake"
    edits = load_edits(path)
    assert [(e.id, e.prompt, e.target_old, e.target_new) for e in edits] == [
        ("mquake-1-0", "Ellie Kemper is a citizen of", "United States of America", "Croatia"),
        ("mquake-1-1", "The name of the current head of state in Croatia is", "Zoran Milanović",
         "Kolinda Grabar-Kitarović"),
    ]
    assert edits[1].paraphrases == ("What is the name of the current head of state in Croatia?",)
    assert all(len(e.portability) == 2 and e.portability[0].answer == "Kolinda Grabar-Kitarović"
               and e.portability[0].aliases == ("Kolinda Grabar Kitarovic",) for e in edits)


@pytest.mark.parametrize("name", ["plain_edits.json", "plain_edits.jsonl"])
def test_plain_fixtures(name):
    path = FIXTURES / name
    assert detect_format(raw(path)) == "plain"
    edits = load_edits(path)
    assert edits == load_edits(path, format="json") == load_edits(path, format="jsonl")
    assert edits == [
        Edit(id="eiffel", prompt="The Eiffel Tower is located in the city of", target_new="Rome", target_old="Paris",
             subject="Eiffel Tower", paraphrases=("Where is the Eiffel Tower?", "The Eiffel Tower stands in"),
             locality=(Probe("The Colosseum is located in the city of", "Rome"),), source=f"plain:{name}"),
        Edit(id="edit-1", prompt="The author of Hamlet is", target_new="Christopher Marlowe", source=f"plain:{name}"),
        Edit(id="7", prompt="The CEO of the company that makes the iPhone is", target_new="Satya Nadella",
             portability=(Probe("Who runs Apple?", "Satya Nadella", ("Nadella",)),), source=f"plain:{name}"),
    ]


def test_bundled_counterfact_sample(counterfact):
    sample = resources.files("corsa").joinpath("data/counterfact_sample.jsonl")
    with resources.as_file(sample) as path:
        edits = load_edits(path)
    assert len(edits) == 16 and all(e.id.startswith("cf-") for e in edits)
    assert all(e.target_old and e.subject and len(e.paraphrases) == 1 and len(e.locality) == 1 for e in edits)
    assert all(len(e.target_new.split()) <= 2 for e in edits)
    by_id = {e.id: e for e in counterfact}
    assert all(by_id[e.id] == e for e in edits)  # copied from the benchmark unchanged


# ---------------------------------------------------------------- round trip and saving

@pytest.mark.parametrize("source", ["rome_counterfact.json", "mquake_remastered.json", "plain_edits.jsonl",
                                    ZSRE, ARENA])
def test_round_trip(source, tmp_path):
    path = FIXTURES / source if "/" not in source else data_file(source)
    edits = load_edits(path, limit=50, on_invalid="skip")
    out = tmp_path / "edits.jsonl"
    save_edits_jsonl(edits, out)
    assert load_edits(out) == edits
    save_edits_jsonl(edits[:2], out)  # replaces the file whole
    assert load_edits(out) == edits[:2]
    assert [p.name for p in tmp_path.iterdir()] == ["edits.jsonl"]  # no temporary file left behind


# ---------------------------------------------------------------- bad input

GOOD = {"prompt": "The capital of France is", "target_new": "Rome", "target_old": "Paris"}


def write(tmp_path: Path, content: str | bytes, name: str = "edits.json") -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


BAD_PLAIN_RECORDS = [  # the second record of a plain file; (record, field, phrase in the message)
    (5, None, "expected an object (an edit record), found a number (5)"),
    (["a"], None, "expected an object (an edit record), found a list"),
    ({"target_new": "x", "prompt": None}, "prompt", "is null"),
    ({"prompt": "  ", "target_new": "x"}, "prompt", "is empty"),
    ({"prompt": "p", "target_new": "\n\t "}, "target_new", "is empty"),
    ({"prompt": "p", "target_new": "x", "target_old": ""}, "target_old", "is empty"),
    ({"prompt": "p", "target_new": 42}, "target_new", "expected text, found a number (42)"),
    ({"prompt": ["p"], "target_new": "x"}, "prompt", "expected text, found a list"),
    ({"prompt": "p", "target_new": "x", "subject": True}, "subject", "expected text, found true/false"),
    ({"prompt": "p", "target_new": "x", "paraphrases": "q"}, "paraphrases", "expected a list of text, found text"),
    ({"prompt": "p", "target_new": "x", "paraphrases": ["q", 3]}, "paraphrases[1]", "found a number (3)"),
    ({"prompt": "p", "target_new": "x", "locality": ["q"]}, "locality[0]", "expected a {prompt, answer} object"),
    ({"prompt": "p", "target_new": "x", "locality": [{"answer": "a"}]}, "locality[0].prompt", "is missing"),
    ({"prompt": "p", "target_new": "x", "portability": [{"prompt": "q", "answer": 1}]}, "portability[0].answer",
     "expected text"),
    ({"prompt": "p", "target_new": "x", "paraphrase": ["q"]}, "paraphrase", "unknown key"),
    ({"prompt": "p", "target_new": "x", "id": [1]}, "id", "expected text or a whole number, found a list"),
    ({"prompt": "p", "target_new": "x", "id": "e", "target_old": "\udc80"}, "target_old", "lone surrogate"),
    ({"prompt": "p", "target_new": " PARIS ", "target_old": "paris"}, "target_new", "is the old answer"),
    ({"prompt": " the capital of  FRANCE is", "target_new": "Berlin"}, "prompt",
     "asked to answer 'Berlin' here but 'Rome' in record 0"),
]


@pytest.mark.parametrize("jsonl", [False, True], ids=["json", "jsonl"])
@pytest.mark.parametrize("bad,field,phrase", BAD_PLAIN_RECORDS, ids=[f"{f}-{p[:20]}" for _, f, p in BAD_PLAIN_RECORDS])
def test_bad_record(tmp_path, bad, field, phrase, jsonl):
    records = [GOOD, bad, GOOD | {"prompt": "The capital of Spain is"}]
    if jsonl:
        path = write(tmp_path, "\n".join(json.dumps(r) for r in records), "edits.jsonl")
    else:
        path = write(tmp_path, json.dumps(records, indent=1))
    with pytest.raises(DataError) as info:
        load_edits(path)
    assert_names(info.value, path, 1, field)
    assert phrase in str(info.value)
    if jsonl:
        assert "(line 2" in info.value.record
    skipped = load_edits(path, on_invalid="skip")  # the same record is dropped, the others kept
    assert [e.id for e in skipped] == ["edit-0", "edit-2"]


def test_duplicate_id(tmp_path):
    path = write(tmp_path, json.dumps([GOOD | {"id": "a"}, GOOD | {"id": "a", "prompt": "Other"}]))
    with pytest.raises(DataError) as info:
        load_edits(path)
    assert_names(info.value, path, 1, "id")
    assert "'a' is already used by record 0" in str(info.value)


BAD_BENCHMARK_RECORDS = [  # (format, record, field, phrase)
    ("zsre", {"src": "q?", "alt": "b", "answers": "a"}, "answers", "expected a list, found text"),
    ("zsre", {"src": "q?", "alt": "b", "answers": ["a"], "loc": "nq question: "}, "loc", "holds no question"),
    ("counterfact-easyedit", {"case_id": 1.5, "prompt": "p", "target_new": "a", "ground_truth": "b"}, "case_id",
     "expected text or a whole number"),
    ("counterfact-rome", {"case_id": 3, "requested_rewrite": {"prompt": "{} is in", "subject": "X",
                                                              "target_new": "Rome", "target_true": {"str": "Oslo"}}},
     "requested_rewrite.target_new", "expected an object, found text"),
    ("counterfact-rome", {"case_id": 3, "requested_rewrite": {"prompt": "X is in", "subject": "X",
                                                              "target_new": {"str": "Rome"},
                                                              "target_true": {"str": "Oslo"}}},
     "requested_rewrite.prompt", "has no '{}'"),
    ("mquake", {"case_id": 3, "requested_rewrite": {}, "questions": [], "new_answer": "a"}, "requested_rewrite",
     "expected a non-empty list of rewrites"),
    ("mquake", {"case_id": 3, "requested_rewrite": [{"prompt": "{} is", "subject": "X", "target_new": {"str": "a"},
                                                     "target_true": {}}], "questions": [], "new_answer": "a"},
     "requested_rewrite[0].target_true.str", "is missing"),
    ("codeupdatearena", {"update": {"function_path": "m.f", "signature": "m.f(x)", "update_id": "u",
                                    "docstring": "d", "description": ["new"]}},
     "update.description", "expected text, found a list"),
    ("codeupdatearena", {"update": {"function_path": "m.f", "signature": "m.f(x)", "update_id": "u",
                                    "docstring": "d", "imports": "import m", "implementation": "def f(x): pass"},
                         "prog_syn_examples": [{"prog_syn_id": "t", "problem": "p"}]},
     "prog_syn_examples[0].solution_signature", "is missing"),
]


@pytest.mark.parametrize("fmt,bad,field,phrase", BAD_BENCHMARK_RECORDS,
                         ids=[f"{f}-{d}" for f, _, d, _ in BAD_BENCHMARK_RECORDS])
def test_bad_benchmark_record(tmp_path, fmt, bad, field, phrase):
    path = write(tmp_path, json.dumps([bad]))
    with pytest.raises(DataError) as info:
        load_edits(path)
    assert_names(info.value, path, 0, field)
    assert phrase in str(info.value)
    assert detect_format([bad]) == fmt


BAD_FILES = [  # (content, phrase)
    ("", "the file is empty"),
    (" \n\t\n", "the file is empty"),
    ("[]", "holds no records"),
    ("42", "holds a number (42)"),
    ('"edits"', "holds text"),
    (b"\xff\xfe\x00[", "is not UTF-8 text"),
    ("[" * 100_000, "nested too deeply"),
    ('[\n{"prompt": "a", "target_new": "b"},\n{"prompt": "c", "target_new": }\n]', "invalid JSON at line 3, column 31"),
    ('{"prompt": "a", "target_new": "b"}\n\n{"prompt": "c" "target_new": "d"}\n', "line 3: invalid JSON"),
    ('[{"prompt": "a", "target_new": "b", "n": 1' + "1" * 5000 + "}]", "invalid JSON"),
]


@pytest.mark.parametrize("content,phrase", BAD_FILES, ids=[p for _, p in BAD_FILES])
def test_bad_file(tmp_path, content, phrase):
    path = write(tmp_path, content)
    with pytest.raises(DataError) as info:
        load_edits(path)
    assert_names(info.value, path, None, None)
    assert phrase in str(info.value)


def test_missing_file_and_folder(tmp_path):
    for path, phrase in [(tmp_path / "nope.jsonl", "does not exist"), (tmp_path, "is a folder")]:
        with pytest.raises(DataError) as info:
            load_edits(path)
        assert_names(info.value, path, None, None)
        assert phrase in str(info.value)


def test_unknown_format(tmp_path):
    path = write(tmp_path, json.dumps([{"question": "q", "answer": "a"}]))
    with pytest.raises(DataError) as info:
        load_edits(path)
    assert_names(info.value, path, 0, None)
    message = str(info.value)
    assert "answer, question" in message and all(f"{name} (" in message for name in FORMATS)


def test_given_format_must_match(tmp_path):
    path = data_file(ZSRE)
    with pytest.raises(DataError) as info:
        load_edits(path, format="mquake")
    assert_names(info.value, path, 0, "case_id")
    assert "not in format 'mquake'" in str(info.value) and "look like format 'zsre'" in str(info.value)
    with pytest.raises(DataError) as info:
        load_edits(FIXTURES / "rome_counterfact.json", format="plain")
    assert "look like format 'counterfact-rome'" in str(info.value)


@pytest.mark.parametrize("kwargs", [{"format": "csv"}, {"limit": 0}, {"limit": -1}, {"limit": "3"}, {"limit": True},
                                    {"on_invalid": "ignore"}])
def test_bad_options(kwargs):
    with pytest.raises(ConfigError):
        load_edits(FIXTURES / "plain_edits.json", **kwargs)


# ---------------------------------------------------------------- fuzz: DataError or valid edits, nothing else

KEYS = sorted({"id", "prompt", "target_new", "target_old", "subject", "paraphrases", "locality", "portability",
               "source", "case_id", "ground_truth", "rephrase_prompt", "locality_prompt", "locality_ground_truth",
               "src", "alt", "answers", "rephrase", "loc", "loc_ans", "requested_rewrite", "target_true", "str",
               "target_new_str", "target_true_str", "question", "questions", "new_answer", "new_answer_alias",
               "paraphrase_prompts", "neighborhood_prompts", "update", "function_path", "signature", "update_id",
               "description", "answer", "aliases"})
leaves = (st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False)
          | st.sampled_from(["", " ", "{} is", "Paris", "paris ", "nq question: who"]) | st.text(max_size=6))
json_values = st.recursive(
    leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=3),
                                                                        inner, max_size=5),
    max_leaves=15)
records = st.dictionaries(st.sampled_from(KEYS), json_values, min_size=1, max_size=8)
# plain edits with text where text belongs (wrong types come from `records`), so that many
# examples load; the repeated words bring no-op edits and conflicting prompts
texts = st.text(min_size=1, max_size=8) | st.sampled_from(["Paris", " paris", "Rome", "\t"])
probes = st.fixed_dictionaries({"prompt": texts}, optional={"answer": texts, "aliases": st.lists(texts, max_size=2)})
plain_records = st.fixed_dictionaries(
    {"prompt": texts, "target_new": texts},
    optional={"id": texts, "target_old": texts, "subject": texts, "paraphrases": st.lists(texts, max_size=2),
              "locality": st.lists(probes, max_size=2), "portability": st.lists(probes, max_size=2)})


def check_outcome(path: Path) -> None:
    """Both modes give DataError or clean edits; whatever loads also saves and loads back unchanged."""
    for on_invalid in ("error", "skip"):
        try:
            edits = load_edits(path, on_invalid=on_invalid)
        except DataError:
            continue
        for e in edits:
            assert isinstance(e, Edit) and isinstance(e.prompt, str) and isinstance(e.target_new, str)
            assert e.prompt == e.prompt.strip() != "" and e.target_new == e.target_new.strip() != ""
        if edits:
            save_edits_jsonl(edits, path.with_name("back.jsonl"))
            assert load_edits(path.with_name("back.jsonl")) == edits


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_bytes(content):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "edits.json"
        path.write_bytes(content)
        check_outcome(path)


@FUZZ
@given(json_values | st.lists(records | plain_records, max_size=4) | records, st.booleans())
def test_fuzz_json(value, as_lines):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "edits.json"
        if as_lines and isinstance(value, list):
            path.write_text("\n".join(json.dumps(v) for v in value), encoding="utf-8")
        else:
            path.write_text(json.dumps(value), encoding="utf-8")
        check_outcome(path)


# --- the Python API's dicts go through the same checks ------------------------------------------

@pytest.mark.parametrize("records, field, message", [
    ([{"prompt": "", "target_new": "Rome"}], "prompt", "empty"),
    ([{"prompt": "The capital is", "target_new": "Rome", "target_old": "rome"}], "target_new", "nothing to edit"),
    ([{"prompt": "A is", "target_new": "x"}, {"prompt": "a is", "target_new": "y"}], None, "asked to answer"),
    ([{"id": "1", "prompt": "A is", "target_new": "x"}, {"id": "1", "prompt": "B is", "target_new": "y"}],
     "id", "already used"),
    ([{"prompt": "A is", "target_new": "x", "target-old": "y"}], "target-old", "unknown key"),
])
def test_python_edits_are_checked_as_file_records(records, field, message):
    from corsa.api import as_edits
    from corsa.errors import DataError

    with pytest.raises(DataError, match=message) as info:
        as_edits(records)
    assert "<edits given in Python>" in str(info.value)
    if field:
        assert field in str(info.value)


def test_python_edits_that_pass_are_the_same_edits_as_before():
    from corsa.api import as_edits

    edits = as_edits([{"prompt": "A is", "target_new": "x"}, {"prompt": "B is", "target_new": "y", "subject": "B"}])
    assert [(e.id, e.prompt, e.target_new, e.subject) for e in edits] == [("edit-0", "A is", "x", None),
                                                                         ("edit-1", "B is", "y", "B")]
    assert as_edits(edits) == edits  # Edit objects alone are taken as they are
    assert len(as_edits([{"prompt": "A is", "target_new": "x"}, {"prompt": "B is", "target_new": "y"}], limit=1)) == 1
