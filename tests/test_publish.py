"""A run folder is always one run's consistent state: kills and full disks while results are written."""

import errno
import json
import os

import pytest

from corsa.cli import main
from corsa.files import stage_dir, stage_text
from corsa.locks import output_lock
from corsa.publish import PARTIAL_LOG, publish, recover_entry


class Killed(BaseException):
    """Stands for SIGKILL at an exact point: nothing after it runs, no handler sees it."""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from corsa.testing import save_tiny_llama

    return str(save_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", seed=0))


@pytest.fixture
def edits_file(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"The capital of land {i} is", "target_new": f"C{i}",
                                        "target_old": f"T{i}"}) + "\n" for i in range(4)))
    return str(path)


def state(out):
    """The run folder's content as {relative path: text}, temporaries included (they must not stay)."""
    return {str(p.relative_to(out)): p.read_bytes().decode("latin-1") for p in sorted(out.rglob("*")) if p.is_file()}


def _fill_adapter(adapter, tag):
    """An adapter folder as corsa writes it (its marker lists its files), each file tagged; the run's
    other files, whose run.json names the same run: markers that prove the folder corsa's."""
    from corsa.ownership import manifest

    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (adapter / name).write_text(tag)
    marker = {"base_fingerprint": None, "method": "lora", "model": "m", "run_id": tag,
              "files": manifest(adapter, ["adapter_config.json", "adapter_model.safetensors"], None)}
    (adapter / "corsa-adapter.json").write_text(json.dumps(marker))
    return {"run.json": json.dumps({"corsa_run": 1, "config": {}, "updates": [], "run_id": tag}),
            "log.jsonl": tag, "edits.jsonl": tag}


def make_run(folder, tag):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter").mkdir()
    for name, text in _fill_adapter(folder / "adapter", tag).items():
        (folder / name).write_text(text)


def stage_run(folder, tag):
    staged = {"adapter": stage_dir(folder, "adapter")}
    for name, text in _fill_adapter(staged["adapter"], tag).items():
        staged[name] = stage_text(folder, name, text)
    return staged


def whole(out, tag):
    """`out` holds exactly one run's files, the run `tag`'s (temporaries count against it)."""
    found = state(out)
    return (set(found) == {"adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                           "adapter/corsa-adapter.json", "edits.jsonl", "log.jsonl", "run.json"}
            and all(json.loads(found[n])["run_id"] == tag for n in ("run.json", "adapter/corsa-adapter.json"))
            and all(found[n] == tag for n in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                                             "edits.jsonl", "log.jsonl")))


def test_a_kill_at_any_rename_of_a_publish_leaves_the_old_run_or_the_new_one(tmp_path, monkeypatch):
    from corsa.adapter import find_adapter_dir

    real = os.replace
    n = 0
    while True:
        out = tmp_path / f"kill-{n}"
        make_run(out, "old")
        staged = stage_run(out, "new")
        calls = []

        def replace(src, dst):
            if len(calls) == n:
                raise Killed
            calls.append(dst)
            real(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        try:
            publish(out, staged)
            finished = True
        except Killed:
            finished = False
        monkeypatch.setattr(os, "replace", real)
        # a reader in the window sees a whole adapter (it finishes the publish when no run holds it)
        assert (find_adapter_dir(out) / "adapter_model.safetensors").read_text() in ("old", "new")
        with output_lock(out):  # the next run on the folder recovers it before anything else
            pass
        # the journal is the first rename: killed before it, the old run stays; after it, the new one
        assert whole(out, "old" if n == 0 else "new"), (n, state(out))
        if finished:
            break
        n += 1
    assert n >= 6  # the journal, the adapter aside and in, three files: a kill before each was tried


def test_a_kill_while_the_adapter_is_written_keeps_the_previous_run_whole(tmp_path, toy_edits, monkeypatch):
    from corsa import adapter as adapters
    from corsa.api import Editor
    from corsa.testing import save_tiny_llama

    base = save_tiny_llama(tmp_path / "base", seed=0)
    out = tmp_path / "run"
    fast = dict(method="corsa", epochs=2, batch_size=2, grad_accum=1, lr=1e-2, progress=False)
    Editor(str(base), **fast).update(toy_edits[:2], out=out)
    before = state(out)

    real = adapters.write

    def killed_mid_write(model, folder, *args, **kwargs):
        real(model, folder, *args, **kwargs)
        (folder / "adapter_model.safetensors").write_bytes(b"torn")
        raise Killed

    monkeypatch.setattr(adapters, "write", killed_mid_write)
    with pytest.raises(Killed):
        Editor(str(base), adapter=out, **fast).update(toy_edits[2:4], out=out)
    monkeypatch.setattr(adapters, "write", real)
    left = state(out)
    # the previous run's adapter, record, edits and log, as they were; the killed run's leftovers aside
    assert {k: v for k, v in left.items() if not k.startswith(".") and k != PARTIAL_LOG} == \
        {k: v for k, v in before.items() if k != ".corsa-lock"}
    assert any(k.startswith(".adapter.") for k in left) and PARTIAL_LOG in left

    editor = Editor(str(base), adapter=out, **fast)
    record = editor.update(toy_edits[2:4], out=out)  # the rerun removes the leftovers first
    after = state(out)
    assert not [k for k in after if k.startswith(".") or k == PARTIAL_LOG]
    run = json.loads(after["run.json"])
    assert after["log.jsonl"].count("\n") == record.result.steps == run["updates"][-1]["steps"]
    assert [json.loads(line)["id"] for line in after["edits.jsonl"].splitlines()] == ["e2", "e3"]


def test_disk_full_at_the_final_publish_is_reported_and_the_rerun_finishes(tmp_path, capsys, tiny_model,
                                                                           edits_file, monkeypatch):
    import shutil

    from corsa import updates

    out = tmp_path / "seq"
    argv = ["edit", "--model", tiny_model, "--edits", edits_file, "--out", str(out), "--updates", "2",
            "--epochs", "1", "--batch-size", "2", "--grad-accum", "1", "--no-check", "--quiet"]

    real = shutil.copy2

    def full(src, dst, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(updates.shutil, "copy2", full)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "could not write" in err and "No space left" in err and "rerun the same command" in err
    assert "Traceback" not in err and not (out / "adapter").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".adapter.")]  # its half copy is removed
    monkeypatch.setattr(updates.shutil, "copy2", real)

    assert main(argv) == 0
    assert "published the last one" in capsys.readouterr().out
    last = out / "update-2"
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == \
        (last / "adapter" / "adapter_model.safetensors").read_bytes()
    assert (out / "run.json").read_text() == (last / "run.json").read_text()
    assert main(argv) == 0 and "already complete" in capsys.readouterr().out


def test_the_space_check_counts_the_adapters_the_run_will_write(tmp_path, capsys, tiny_model, edits_file,
                                                                monkeypatch):
    import shutil
    from collections import namedtuple

    from corsa.api import Editor

    need_one = 2 * Editor(tiny_model, progress=False).adapter_bytes() + 20 * 2**20
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**12, 0, need_one + 2**20))
    common = ["--model", tiny_model, "--edits", edits_file, "--epochs", "1", "--no-check", "--quiet"]
    # room for one update's adapter, not for three updates and the final copy
    assert main(["edit", *common, "--out", str(tmp_path / "one")]) == 0
    assert main(["edit", *common, "--out", str(tmp_path / "three"), "--updates", "3"]) == 2
    err = capsys.readouterr().err
    assert "MiB free" in err and not (tmp_path / "three" / "update-1").exists()


def test_a_killed_model_conversion_is_cleaned_for_that_model_only(tmp_path):
    (tmp_path / ".m.abcd_123.tmp").mkdir()
    (tmp_path / ".m.abcd_123.tmp" / "model.safetensors").write_text("half")
    (tmp_path / ".other.abcd_123.tmp").mkdir()  # another model's conversion, maybe under way
    (tmp_path / ".m.lock").write_text("")
    recover_entry(tmp_path, "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.lock", ".other.abcd_123.tmp"]


def test_recovery_never_removes_what_corsa_did_not_write(tmp_path):
    out = tmp_path / "run"
    make_run(out, "old")
    (out / ".notes.tmp").write_text("mine")  # not a name corsa's temporaries have
    with output_lock(out):
        pass
    assert (out / ".notes.tmp").read_text() == "mine"


def test_a_full_disk_while_a_rerun_writes_keeps_the_previous_run(tmp_path, toy_edits, monkeypatch):
    from corsa import adapter as adapters
    from corsa.api import Editor
    from corsa.errors import OutputError
    from corsa.testing import save_tiny_llama

    base = save_tiny_llama(tmp_path / "base", seed=0)
    out = tmp_path / "run"
    fast = dict(method="lora", epochs=1, batch_size=2, grad_accum=1, lr=1e-2, progress=False)
    Editor(str(base), **fast).update(toy_edits[:2], out=out)
    before = state(out)
    real = adapters.write

    def full(model, folder, *args, **kwargs):
        real(model, folder, *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(adapters, "write", full)
    with pytest.raises(OutputError, match="No space left.*unchanged"):
        Editor(str(base), adapter=out, **fast).update(toy_edits[2:4], out=out)
    after = state(out)
    assert {k: v for k, v in after.items() if k != PARTIAL_LOG} == before  # its staged adapter is gone too
