"""Bad input through the CLI: one clear paragraph naming file, record and field; no traceback."""

import json

import pytest

from corsa.cli import main


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from corsa.testing import save_tiny_llama

    return str(save_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", seed=0))


def run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def write(path, text):
    path.write_text(text)
    return str(path)


GOOD = {"prompt": "The capital of X is", "target_new": "Y", "target_old": "Z"}

BAD_FILES = [
    # (name, content, words the message must contain)
    ("missing", None, ["does not exist"]),
    ("empty.jsonl", "", ["empty"]),
    ("bad.json", '[{"prompt": "a", "target_new": }]', ["bad.json"]),
    ("bad.jsonl", json.dumps(GOOD) + "\n{not json\n", ["line 2"]),
    ("unknown.json", json.dumps([{"question": "q", "reply": "r"}]), ["format"]),
    ("noprompt.jsonl", json.dumps({"target_new": "Y"}), ["field 'prompt'", "missing"]),
    ("notarget.jsonl", json.dumps({"prompt": "P is"}), ["field 'target_new'", "missing"]),
    ("blank.jsonl", json.dumps({"prompt": "P is", "target_new": "   "}), ["target_new"]),
    ("same.jsonl", json.dumps({"prompt": "P is", "target_new": "Rome", "target_old": " rome"}), ["target_old"]),
    ("conflict.jsonl", json.dumps({"prompt": "P is", "target_new": "A"}) + "\n"
     + json.dumps({"prompt": "P is", "target_new": "B"}), ["P is"]),
    ("nontext.jsonl", json.dumps({"prompt": "P is", "target_new": 42}), ["target_new"]),
    ("list.jsonl", json.dumps({"prompt": ["P"], "target_new": "A"}), ["prompt"]),
]


@pytest.mark.parametrize("name, content, words", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_edit_files(name, content, words, tmp_path, capsys, tiny_model):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    code, err = run(capsys, "edit", "--model", tiny_model, "--edits", str(path), "--out", str(tmp_path / "o"))
    assert code == 2
    assert err.startswith("corsa: error: ") and "Traceback" not in err
    assert name in err, err
    for w in words:
        assert w in err, err
    assert not (tmp_path / "o" / "adapter").exists()


def test_record_is_named_by_index_or_id(tmp_path, capsys, tiny_model):
    path = write(tmp_path / "e.jsonl", json.dumps(GOOD) + "\n" + json.dumps({"id": "mine", "prompt": "Q is"}))
    code, err = run(capsys, "edit", "--model", tiny_model, "--edits", path, "--out", str(tmp_path / "o"))
    assert code == 2 and "mine" in err and "target_new" in err


def test_edit_longer_than_the_context(tmp_path, capsys, tiny_model):
    long = {"prompt": "word " * 600, "target_new": "A", "target_old": "B", "id": "long-one"}
    path = write(tmp_path / "long.jsonl", json.dumps(long))
    code, err = run(capsys, "edit", "--model", tiny_model, "--edits", path, "--out", str(tmp_path / "o"))
    assert code == 2 and "context" in err and "long-one" in err and "field 'prompt'" in err
    assert "file long.jsonl," in err


@pytest.mark.parametrize("flags, words", [
    (["--method", "magic"], ["unknown method", "corsa-no-pcgrad"]),
    (["--rho", "-0.1"], ["rho"]),
    (["--beta", "0"], ["beta"]),
    (["--lr", "0"], ["lr"]),
    (["--lora-r", "0"], ["lora_r"]),
    (["--method", "lora", "--rho", "0.05"], ["does not use SAM"]),
])
def test_bad_options(flags, words, tmp_path, capsys, tiny_model):
    path = write(tmp_path / "e.jsonl", json.dumps(GOOD))
    code, err = run(capsys, "edit", "--model", tiny_model, "--edits", path, "--out", str(tmp_path / "o"), *flags)
    assert code == 2 and "Traceback" not in err
    for w in words:
        assert w in err, err


def test_unknown_model_and_adapter(tmp_path, capsys, tiny_model):
    path = write(tmp_path / "e.jsonl", json.dumps(GOOD))
    code, err = run(capsys, "edit", "--model", str(tmp_path / "nowhere"), "--edits", path, "--out", str(tmp_path / "o"))
    assert code == 2 and "nowhere" in err
    code, err = run(capsys, "edit", "--model", tiny_model, "--adapter", str(tmp_path / "noadapter"),
                    "--edits", path, "--out", str(tmp_path / "o"))
    assert code == 2 and "noadapter" in err and "does not exist" in err


@pytest.mark.parametrize("command", ["edit", "eval"])
def test_unwritable_output_is_reported_before_the_work(tmp_path, capsys, tiny_model, command):
    path = write(tmp_path / "e.jsonl", json.dumps(GOOD))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")  # a file where the output needs a folder
    code, err = run(capsys, command, "--model", tiny_model, "--edits", path, "--out", str(blocker / "out"))
    assert code == 2 and "not writable" in err


def test_disk_full_is_reported_before_training(tmp_path, capsys, tiny_model, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1024, 1024))
    path = write(tmp_path / "e.jsonl", json.dumps(GOOD))
    code, err = run(capsys, "edit", "--model", tiny_model, "--edits", path, "--out", str(tmp_path / "o"))
    assert code == 2 and "MiB free" in err


def test_debug_shows_the_traceback(tmp_path, tiny_model):
    from corsa import DataError

    with pytest.raises(DataError):
        main(["--debug", "edit", "--model", tiny_model, "--edits", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")])


def test_non_finite_loss_stops_with_step_and_batch_and_keeps_last_good(tmp_path, monkeypatch, tiny_model):
    import torch

    import corsa.step as step
    from corsa import Editor, TrainingError

    real = step.sft_loss
    calls = {"n": 0}

    def poisoned(lp, n):
        calls["n"] += 1
        loss = real(lp, n)
        return loss * float("nan") if calls["n"] > 4 else loss

    monkeypatch.setattr(step, "sft_loss", poisoned)
    editor = Editor(tiny_model, method="lora", epochs=5, batch_size=2, grad_accum=1, progress=False)
    edits = [{"id": f"e{i}", "prompt": f"Fact {i} is", "target_new": "A", "target_old": "B"} for i in range(2)]
    with pytest.raises(TrainingError, match=r"non-finite .* at step 5 on the edit batch \['e0', 'e1'\]"):
        editor.update(edits, out=tmp_path / "o")
    saved = tmp_path / "o" / "adapter-last-good" / "adapter_model.safetensors"
    assert saved.exists()
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(saved).values())


# --- round two (issue "Nothing lost, round two"): refused before any work ------------------------

def test_empty_out_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch, tiny_model):
    monkeypatch.chdir(tmp_path)
    edits = write(tmp_path / "e.jsonl", json.dumps(GOOD))
    for argv in (["edit", "--model", tiny_model, "--edits", edits, "--out", ""],
                 ["eval", "--model", tiny_model, "--edits", edits, "--out", "  "],
                 ["bench", "--model", tiny_model, "--data", edits, "--out", ""]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2 and "--out" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.jsonl"]
    from corsa.publish import check_writable
    from corsa.errors import ConfigError

    with pytest.raises(ConfigError, match="empty"):
        check_writable("")  # the Python API's update(out="") meets the same refusal


@pytest.mark.parametrize("argv, words", [
    (["--seed", "-1"], ["seed", "2³²"]),
    (["--seed", str(2**32)], ["seed"]),
])
def test_seeds_out_of_range_are_refused(tmp_path, capsys, tiny_model, argv, words):
    edits = write(tmp_path / "e.jsonl", json.dumps(GOOD))
    code, err = run(capsys, "edit", "--model", tiny_model, "--edits", edits, "--out", str(tmp_path / "o"), *argv)
    assert code == 2 and all(w in err for w in words) and not (tmp_path / "o").exists()


def test_ask_refuses_no_tokens_and_empty_prompts(capsys, tiny_model):
    assert run(capsys, "ask", "hello", "--model", tiny_model, "--max-new-tokens", "0")[0] == 2
    code, err = run(capsys, "ask", "hello", "--model", tiny_model, "--max-new-tokens", "-5")
    assert code == 2 and "max_new_tokens" in err
    code, err = run(capsys, "ask", "  ", "--model", tiny_model, "--template", "raw")
    assert code == 2 and "empty" in err
    # longer than the context (512 tokens for the tiny model): refused as in `corsa edit`, not cut
    code, err = run(capsys, "ask", "word " * 200, "--model", tiny_model, "--template", "raw")
    assert code == 2 and "no room for an answer in the model's context of 512" in err
    # one that fits gets an answer cut where the context ends
    assert run(capsys, "ask", "word " * 101, "--model", tiny_model, "--template", "raw", "--max-new-tokens", "40")[0] == 0


def test_a_model_cache_that_cannot_be_written_is_a_clear_error(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    (cache / "models" / ".smollm2-135m.lock").mkdir(parents=True)  # the lock cannot be opened: unwritable
    monkeypatch.setenv("CORSA_CACHE", str(cache))
    code, err = run(capsys, "ask", "hello", "--model", "smollm2-135m")
    assert code == 2 and "cannot be written" in err and "CORSA_CACHE" in err and "Traceback" not in err


# --- the user's files are never replaced or deleted -----------------------------------------------

def test_an_out_folder_with_files_corsa_did_not_write_is_refused(tmp_path, capsys, tiny_model):
    edits = write(tmp_path / "e.jsonl", json.dumps(GOOD))
    for where in ("notes.txt", "adapter/notes.txt"):
        out = tmp_path / f"out-{where.replace('/', '-')}"
        (out / where).parent.mkdir(parents=True, exist_ok=True)
        (out / where).write_text("mine")
        code, err = run(capsys, "edit", "--model", tiny_model, "--edits", edits, "--out", str(out), "--no-check")
        assert code == 2 and where in err and "did not write" in err
        assert (out / where).read_text() == "mine"
    # a folder corsa wrote itself is a rerun, and is allowed
    out = tmp_path / "mine"
    assert run(capsys, "edit", "--model", tiny_model, "--edits", edits, "--out", str(out), "--no-check",
               "--epochs", "1")[0] == 0
    assert run(capsys, "edit", "--model", tiny_model, "--edits", edits, "--out", str(out), "--no-check",
               "--epochs", "1")[0] == 0


def test_an_output_never_overwrites_an_input(tmp_path, capsys, tiny_model):
    out = tmp_path / "run"
    out.mkdir()
    inside = write(out / "edits.jsonl", json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "prompt": "Q is"}))
    before = (out / "edits.jsonl").read_text()
    code, err = run(capsys, "edit", "--model", tiny_model, "--edits", inside, "--limit", "1", "--out", str(out))
    assert code == 2 and "inside the output" in err
    assert (out / "edits.jsonl").read_text() == before
    code, err = run(capsys, "eval", "--model", tiny_model, "--edits", inside, "--out", inside)
    assert code == 2 and (out / "edits.jsonl").read_text() == before
    mine = tmp_path / "notes.json"
    mine.write_text('{"my": "notes"}')
    code, err = run(capsys, "eval", "--model", tiny_model, "--edits", write(tmp_path / "e.jsonl", json.dumps(GOOD)),
                    "--out", str(mine))
    assert code == 2 and "not a metrics file" in err and mine.read_text() == '{"my": "notes"}'


def test_a_second_run_on_a_folder_in_use_is_refused_and_a_killed_one_leaves_no_lock(tmp_path):
    import subprocess
    import sys

    from corsa.errors import ConfigError
    from corsa.locks import output_lock

    out = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from corsa.locks import output_lock\n"
                               f"with output_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"in use by another corsa run \\(process {holder.pid}\\)"):
            with output_lock(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    with output_lock(out):  # the killed run's lock went with it
        with output_lock(out):  # and one process may enter its own lock again
            pass
    assert not (out / ".corsa-lock").exists()


def test_ask_with_no_prompts_answers_nothing(tiny):
    from corsa import Editor

    editor = Editor(tiny, method="lora", progress=False)
    assert editor.max_length is not None  # the context check runs, and must not choke on an empty list
    assert editor.ask([]) == []
