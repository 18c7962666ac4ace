"""Issue 34, review round: corsa removes only temporaries it can prove it staged, never a user's file by name.

A killed run's leftovers are removed when the next run takes the folder, but only in a folder proved
corsa's, only names corsa stages there, and only step logs; a FIFO under a listed name never hangs
the ownership check; the output lock is never held by two processes; small files are read bounded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from corsa import ConfigError, Editor
from corsa.cli import main
from corsa.files import jsonl_text
from corsa.ownership import foreign_files
from corsa.testing import FAST as TRAIN_FAST, save_tiny_llama

FAST = {**TRAIN_FAST, "method": "lora", "epochs": 1, "edit_stop": False}
EDITS = [{"id": f"e{i}", "prompt": f"The code of item {i} is", "target_new": f"Q{i}", "target_old": f"A{i}"}
         for i in range(2)]


def _users_leftovers(out: Path, sub: bool = False) -> dict:
    """A user's files whose names look like a killed run's temporaries."""
    out.mkdir(parents=True)
    (out / ".notes.abcdefgh.tmp").write_text("my notes")
    (out / ".thesis.20261207.tmp").write_text("my thesis")
    (out / ".photos.backup12.old").mkdir()
    (out / ".photos.backup12.old" / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    if sub:
        (out / "sub").mkdir()
        (out / "sub" / "log.partial.jsonl").write_text('{"step": 1}\n')
    return _snapshot(out)


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(save_tiny_llama(tmp_path_factory.mktemp("own") / "model", seed=0))


def test_only_names_corsa_stages_in_a_folder_are_its_temporaries(tmp_path):
    from corsa.ownership import is_staged

    for name, kind, ours in ((".adapter.k2j4_x9a.tmp", "run", True), (".run.json.abcdefgh.tmp", "run", True),
                             (".update-3.abcdefgh.tmp", "run", True), (".notes.abcdefgh.tmp", "run", False),
                             (".thesis.20261207.tmp", "run", False), (".report.md.abcdefgh.tmp", "bench", True),
                             (".report.md.abcdefgh.tmp", "run", False), (".contents.abcdefgh.tmp", "export", True),
                             (".run.json.abcdefgh.tmp", None, False)):
        entry = tmp_path / name
        entry.write_text("x")
        assert is_staged(entry, kind) is ours, (name, kind)
        entry.unlink()
    (tmp_path / ".adapter.abcdefgh.old").write_text("x")  # corsa sets aside folders only
    assert not is_staged(tmp_path / ".adapter.abcdefgh.old", "run")
    (tmp_path / ".photos.backup12.old").mkdir()
    assert foreign_files(tmp_path, "run") == [".adapter.abcdefgh.old", ".photos.backup12.old"]


def test_corsa_edit_never_removes_a_users_temporary_looking_files(tmp_path, capsys):
    for sub in (False, True):
        out = tmp_path / f"out{sub}"
        before = _users_leftovers(out, sub)
        edits = tmp_path / "e.jsonl"
        edits.write_text(jsonl_text(EDITS))
        code = main(["edit", "--model", str(tmp_path / "missing"), "--edits", str(edits), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and "corsa did not write" in err, err
        assert _snapshot(out) == before


def test_bench_and_demo_never_remove_a_users_temporary_looking_files(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text(jsonl_text([{**e, "paraphrases": ["p"]} for e in EDITS]))
    for sub in (False, True):
        out = tmp_path / f"bench{sub}"
        before = _users_leftovers(out, sub)
        code = main(["bench", "--model", str(tmp_path / "missing"), "--data", str(data), "--methods", "lora",
                     "--edits", "2", "--updates", "1", "--out", str(out), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and "corsa did not write" in err, err
        assert _snapshot(out) == before
        demo = tmp_path / f"demo{sub}"
        before = _users_leftovers(demo, sub)
        code = main(["demo", "--out", str(demo), "--quiet"])
        err = capsys.readouterr().err
        assert code == 2 and "corsa did not write" in err, err
        assert _snapshot(demo) == before


def test_editor_update_and_save_never_remove_a_users_temporary_looking_files(tiny_model, tmp_path):
    editor = Editor(tiny_model, **FAST)
    for sub in (False, True):
        out = tmp_path / f"o{sub}"
        before = _users_leftovers(out, sub)
        with pytest.raises(ConfigError, match="corsa did not write"):
            editor.update(EDITS, out=out)
        assert _snapshot(out) == before
        with pytest.raises(ConfigError, match="corsa did not write"):
            editor.save(out)
        assert _snapshot(out) == before


def test_a_reader_replays_a_journal_only_in_a_folder_proved_corsas(tmp_path):
    from corsa.adapter import _finish_publish

    out = tmp_path / "read"
    before = _users_leftovers(out)
    (out / ".corsa-publish.adapter.json").write_text(json.dumps({"moves": []}))
    before = _snapshot(out)
    _finish_publish(out)  # what `ask` / `eval --adapter` do before reading
    assert _snapshot(out) == before


def test_recovery_still_cleans_corsas_own_leftovers(tmp_path):
    from corsa.locks import output_lock

    out = tmp_path / "run"
    out.mkdir()
    (out / ".adapter.abcdefgh.tmp").mkdir()
    (out / ".adapter.abcdefgh.tmp" / "adapter_model.safetensors").write_bytes(b"half")
    (out / ".run.json.k2j4_x9a.tmp").write_text("{")
    (out / "log.partial.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"st')  # torn by a kill
    with output_lock(out):
        assert sorted(os.listdir(out)) == [".corsa-lock"]
    (out / "log.partial.jsonl").write_text("my own notes, not a step log\n")
    (out / ".run.json.k2j4_x9a.tmp").write_text("{")
    with output_lock(out):  # not proved corsa's: nothing is touched
        assert sorted(os.listdir(out)) == [".corsa-lock", ".run.json.k2j4_x9a.tmp", "log.partial.jsonl"]


def test_a_fifo_under_an_adapters_listed_name_never_hangs_the_check(tmp_path):
    for folder in ("adapter-last-good", "adapter"):
        out = tmp_path / folder
        (out / folder).mkdir(parents=True)
        marker = {"base_fingerprint": None, "method": "lora", "model": "m", "run_id": "r",
                  "files": {"adapter_model.safetensors": {"bytes": 8, "sha256": "0" * 64}}}
        (out / folder / "corsa-adapter.json").write_text(json.dumps(marker))
        if folder == "adapter":
            (out / "run.json").write_text(json.dumps({"corsa_run": 1, "config": {}, "updates": [], "run_id": "r"}))
        os.mkfifo(out / folder / "adapter_model.safetensors")
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parents[1] / 'src')!r})\n"
                f"from corsa.ownership import foreign_files\nprint(foreign_files({str(out)!r}, 'run'))")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
        assert done.returncode == 0, done.stderr
        assert f"{folder}/adapter_model.safetensors" in done.stdout


def test_the_output_lock_is_never_held_on_an_unlinked_lock_file(tmp_path, monkeypatch):
    """A run that opened .corsa-lock just before its holder unlinked it must not lock that orphan
    while a third run holds the new file."""
    import fcntl

    from corsa import locks

    folder = tmp_path / "f"
    folder.mkdir()
    path = folder / ".corsa-lock"
    path.write_text("")
    stale = open(path, "a+")  # opened before the holder let go ...
    path.unlink()  # ... which unlinks the file
    third = open(path, "a+")  # a third run creates a new one and holds it
    fcntl.flock(third, fcntl.LOCK_EX | fcntl.LOCK_NB)
    calls = []

    def racing_open(file, *args, **kwargs):
        calls.append(file)
        return stale if len(calls) == 1 else open(file, *args, **kwargs)

    monkeypatch.setattr(locks, "open", racing_open, raising=False)
    try:
        with pytest.raises(ConfigError, match="in use"):
            with locks.output_lock(folder):
                pass
    finally:
        third.close()
    with locks.output_lock(folder):  # released: taken
        pass


def test_small_files_are_read_bounded(tmp_path):
    from corsa.errors import DataError
    from corsa.loaders import _read_records
    from corsa.vllm_backend import adapter_rank

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    os.mkfifo(adapter / "adapter_config.json")
    result = {}

    def read():
        try:
            adapter_rank(adapter)
        except ConfigError as e:
            result["rank"] = str(e)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive() and "not a regular file" in result["rank"]
    (adapter / "adapter_config.json").unlink()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    assert adapter_rank(adapter) == 8
    edits = tmp_path / "e.jsonl"
    edits.write_text(jsonl_text(EDITS))
    assert len(_read_records(edits)[0]) == 2
    with pytest.raises(DataError, match="is not UTF-8"):
        (tmp_path / "bad.jsonl").write_bytes(b"\xff\xfe{")
        _read_records(tmp_path / "bad.jsonl")
