"""Issue 34, "Nothing lost, round three": each case of the issue and variants of its class.

Classes: ownership by proof (run folders; exports are in test_export.py), one folder per run within
a process too, JSON Lines round trips over hostile text, any method's adapter read by any command,
first calls from two threads, a failed update that leaves the adapter as it found it, bounded reads
of every file corsa reads, bounded sizes, tampered markers, and input refused that was accepted.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from corsa import ConfigError, DataError, Editor, ModelError, TrainingError
from corsa.cli import main
from corsa.files import jsonl_line, jsonl_lines, jsonl_text
from corsa.locks import output_lock
from corsa.ownership import foreign_files
from corsa.records import Edit, Probe
from corsa.testing import FAST as TRAIN_FAST, save_tiny_llama

FAST = {**TRAIN_FAST, "method": "lora", "epochs": 1, "edit_stop": False}  # one pass of lora, chosen explicitly
EDITS = [{"id": f"e{i}", "prompt": f"The code of item {i} is", "target_new": f"Q{i}", "target_old": f"A{i}"}
         for i in range(2)]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(save_tiny_llama(tmp_path_factory.mktemp("lost") / "model", seed=0))


@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory):
    """A real `corsa edit` run folder (this version's markers)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    edits = out.parent / "edits.jsonl"
    edits.write_text(jsonl_text(EDITS))
    assert main(["edit", "--model", tiny_model, "--edits", str(edits), "--out", str(out), "--method", "lora",
                 "--epochs", "1", "--no-check", "--quiet"]) == 0
    return out


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# --- ownership by proof: a run folder ----------------------------------------------------------------

def _user_files(root: Path, adapter_src: Path) -> dict:
    """Folders holding a user's file of each name corsa uses in a run folder: name -> (folder, path named)."""
    cases = {}

    def make(name, files):
        folder = root / name
        for rel, content in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(content if isinstance(content, bytes) else content.encode())
        return folder

    cases["run.json"] = (make("user-run-json", {"run.json": '{"mine": 1}', "log.jsonl": '{"step": 1}\n'}), "run.json")
    cases["log.jsonl"] = (make("user-log", {"log.jsonl": "my log\n"}), "log.jsonl")
    cases["edits.jsonl"] = (make("user-edits", {"edits.jsonl": json.dumps(EDITS[0]) + "\n"}), "edits.jsonl")
    cases["progress.json"] = (make("user-progress", {"progress.json": '{"done": true}'}), "progress.json")
    cases["log.partial.jsonl"] = (make("user-partial", {"log.partial.jsonl": "my notes\n"}), "log.partial.jsonl")
    cases["update-1 file"] = (make("user-update-file", {"update-1": "mine"}), "update-1")
    cases["update-2/notes"] = (make("user-update-dir", {"update-2/notes.txt": "mine"}), "update-2/notes.txt")
    cases["tensorboard/notes"] = (make("user-tb", {"tensorboard/notes.txt": "mine"}), "tensorboard/notes.txt")
    # a PEFT adapter corsa did not write, in OUT/adapter/, beside nothing or beside a run record it did not write
    peft = {"adapter/adapter_config.json": (adapter_src / "adapter_config.json").read_bytes(),
            "adapter/adapter_model.safetensors": (adapter_src / "adapter_model.safetensors").read_bytes()}
    cases["foreign adapter"] = (make("user-adapter", peft), "adapter/adapter_config.json")
    cases["foreign adapter-last-good"] = (make("user-last-good", {k.replace("adapter/", "adapter-last-good/"): v
                                                                  for k, v in peft.items()}),
                                          "adapter-last-good/adapter_model.safetensors")
    # corsa's own run, with the adapter of another run put in its place (the run ids differ)
    other = _copy(adapter_src.parent, root / "other-adapter")
    marker = json.loads((other / "adapter" / "corsa-adapter.json").read_text())
    marker["run_id"] = "0" * 32
    (other / "adapter" / "corsa-adapter.json").write_text(json.dumps(marker))
    cases["adapter of another run"] = (other, "adapter/corsa-adapter.json")
    # corsa's own run, with a file the user changed inside its adapter (PEFT's README)
    changed = root / "changed-readme"
    _copy(adapter_src.parent, changed)
    (changed / "adapter" / "README.md").write_text("my own notes")
    cases["changed adapter/README.md"] = (changed, "adapter/README.md")
    # corsa's own run, with whole weights of the user's in place of the adapter's (not damaged: the user's)
    from safetensors.torch import load_file, save_file

    swapped = _copy(adapter_src.parent, root / "swapped-weights")
    weights = swapped / "adapter" / "adapter_model.safetensors"
    save_file({k: v + 1 for k, v in load_file(weights).items()}, str(weights))
    cases["weights of the user's"] = (swapped, "adapter/adapter_model.safetensors")
    # corsa's own names for its lock and its journal, holding a user's text
    cases[".corsa-lock"] = (make("user-lock", {".corsa-lock": "my secret notes"}), ".corsa-lock")
    cases[".corsa-publish"] = (make("user-journal", {".corsa-publish.adapter.json": '{"mine": 1}'}),
                               ".corsa-publish.adapter.json")
    return cases


def test_a_run_folder_is_corsas_only_by_proof(run_dir, tiny_model, tmp_path, capsys):
    """A user's file of every name corsa uses in a run folder: refused before any work (the model is
    never loaded), the path named, every byte unchanged; corsa's own folder is accepted."""
    edits = tmp_path / "e.jsonl"
    edits.write_text(jsonl_text(EDITS))
    cases = _user_files(tmp_path, run_dir / "adapter")
    assert len(cases) == 15
    for name, (folder, named) in cases.items():
        before = _snapshot(folder)
        assert any(named == f or named.startswith(f + "/") or f.startswith(named)
                   for f in foreign_files(folder, "run")), (name, foreign_files(folder, "run"))
        code, err = _cli(capsys, "edit", "--model", tmp_path / "no-such-model", "--edits", edits, "--out", folder,
                         "--method", "lora", "--no-check")
        assert code == 2 and "did not write" in err and named.split("/")[0] in err and "Traceback" not in err, name
        assert _snapshot(folder) == before, name
    assert foreign_files(run_dir, "run") == []


def test_an_earlier_versions_run_is_still_corsas_while_its_markers_agree(run_dir, tmp_path):
    """A run of an earlier version: markers without run_id or file list. Accepted while the adapter's
    base fingerprint is the run record's and every name is corsa's; refused otherwise."""
    old = _copy(run_dir, tmp_path / "old")
    record = json.loads((old / "run.json").read_text())
    marker = json.loads((old / "adapter" / "corsa-adapter.json").read_text())
    del record["run_id"], marker["run_id"], marker["files"]
    (old / "run.json").write_text(json.dumps(record))
    (old / "adapter" / "corsa-adapter.json").write_text(json.dumps(marker))
    assert foreign_files(old, "run") == []
    (old / "adapter" / "notes.txt").write_text("mine")
    assert foreign_files(old, "run") == ["adapter/notes.txt"]
    (old / "adapter" / "notes.txt").unlink()
    marker["base_fingerprint"] = "another-model"
    (old / "adapter" / "corsa-adapter.json").write_text(json.dumps(marker))
    assert "adapter/adapter_model.safetensors" in foreign_files(old, "run")


def test_a_rerun_into_corsas_own_folder_replaces_only_its_files(run_dir, tiny_model, tmp_path, capsys):
    out = _copy(run_dir, tmp_path / "again")
    edits = tmp_path / "e.jsonl"
    edits.write_text(jsonl_text(EDITS))
    code, err = _cli(capsys, "edit", "--model", tiny_model, "--edits", edits, "--out", out, "--method", "lora",
                     "--epochs", "1", "--no-check", "--quiet")
    assert code == 0, err
    record = json.loads((out / "run.json").read_text())
    marker = json.loads((out / "adapter" / "corsa-adapter.json").read_text())
    assert record["run_id"] == marker["run_id"] != json.loads((run_dir / "run.json").read_text())["run_id"]
    assert set(marker["files"]) == {p.name for p in (out / "adapter").iterdir()} - {"corsa-adapter.json"}


def test_a_bench_folder_is_corsas_only_by_its_bench_record(tmp_path):
    methods = ("lora", "corsa")
    folder = tmp_path / "bench"
    folder.mkdir()
    (folder / "results.json").write_text("{}")  # corsa's name, but no bench.json
    assert foreign_files(folder, "bench", methods) == ["results.json"]
    (folder / "bench.json").write_text('{"mine": true}')  # a bench.json corsa did not write
    assert foreign_files(folder, "bench", methods) == ["bench.json", "results.json"]
    (folder / "bench.json").write_text(json.dumps({"model_fingerprint": "f", "n_updates": 2, "seed": 0}))
    assert foreign_files(folder, "bench", methods) == []
    (folder / "lora").mkdir()
    (folder / "lora" / "config.json").write_text('{"name": "my config"}')
    (folder / "lora" / "update-1").mkdir()
    (folder / "lora" / "notes.txt").write_text("mine")
    (folder / "lora" / "update-1" / "eval.json").write_text("{}")
    (folder / "lora" / "update-1" / "notes.txt").write_text("mine")  # inside an update's folder too
    assert foreign_files(folder, "bench", methods) == ["lora/config.json", "lora/notes.txt",
                                                       "lora/update-1/notes.txt"]


def test_the_python_api_refuses_a_users_run_record_too(tiny_model, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "run.json").write_text('{"my": "experiment"}')
    editor = Editor(tiny_model, **FAST)
    with pytest.raises(ConfigError, match="run.json"):
        editor.update(EDITS, out=out)
    assert (out / "run.json").read_text() == '{"my": "experiment"}' and sorted(os.listdir(out)) == ["run.json"]
    with pytest.raises(ConfigError, match="run.json"):
        editor.save(out)
    lock = tmp_path / "l"
    lock.mkdir()
    (lock / ".corsa-lock").write_text("my notes")  # the lock is taken before the folder is checked
    with pytest.raises(ConfigError, match="corsa-lock"):
        editor.update(EDITS, out=lock)
    assert (lock / ".corsa-lock").read_text() == "my notes"
    journal = tmp_path / "j"
    journal.mkdir()
    (journal / ".corsa-publish.adapter.json").write_text("my notes")  # the lock replays journals first
    with pytest.raises(ConfigError, match="corsa-publish"):
        editor.update(EDITS, out=journal)
    assert (journal / ".corsa-publish.adapter.json").read_text() == "my notes"


# --- one folder, one run: within a process too -------------------------------------------------------

def test_the_output_lock_holds_between_threads_and_is_reentrant_in_one(tmp_path):
    folder = tmp_path / "o"
    held, release, seen = threading.Event(), threading.Event(), []

    def holder():
        with output_lock(folder):
            with output_lock(folder):  # the same thread again: re-entrant
                held.set()
                release.wait(10)

    def second():
        try:
            with output_lock(folder):
                seen.append("entered")
        except ConfigError as e:
            seen.append(str(e))

    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(10)
    other = threading.Thread(target=second)
    other.start()
    other.join(10)
    release.set()
    t.join(10)
    assert len(seen) == 1 and "in use by another corsa run in this process" in seen[0]
    with output_lock(folder):  # released: taken again
        pass


def test_two_editors_in_two_threads_on_one_folder(tiny_model, tmp_path, monkeypatch):
    """The first Editor trains; the second, on the same folder, is refused; the first's results are whole."""
    import corsa.api as api

    real, inside, go = api.train_update, threading.Event(), threading.Event()

    def slow(*args, **kwargs):
        inside.set()
        go.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "train_update", slow)
    out, errors = tmp_path / "shared", []
    first, second = Editor(tiny_model, **FAST), Editor(tiny_model, **FAST)
    t = threading.Thread(target=lambda: first.update(EDITS, out=out))
    t.start()
    assert inside.wait(60)
    try:
        second.update(EDITS, out=out)
    except ConfigError as e:
        errors.append(str(e))
    go.set()
    t.join(120)
    assert errors and "in use" in errors[0]
    record = json.loads((out / "run.json").read_text())
    assert record["run_id"] == first.run_id
    steps = [json.loads(line) for _, line in jsonl_lines((out / "log.jsonl").read_text())]
    assert len(steps) == record["updates"][0]["steps"] >= 1


# --- JSON Lines: one writer, one reader --------------------------------------------------------------

HOSTILE = ["a\u2028b", "a\u2029b", "a\x85b", "a\rb", "a\x0bb\x0cc", "a\x1cb\x1dc\x1ed", "tab\tand\nnewline",
           "\ufeffbom", "emoji \U0001F600", "\"quoted\" \\ back", "RTL \u202e text"]


def test_jsonl_round_trip_over_hostile_text():
    records = [{"text": t, "list": [t, {"k": t}]} for t in HOSTILE]
    text = jsonl_text(records)
    assert text.count("\n") == len(records) and len(text.splitlines()) == len(records)  # even splitlines agrees
    assert [json.loads(line) for _, line in jsonl_lines(text)] == records
    assert jsonl_line({"a": "\u2028"}) == '{"a": "\\u2028"}\n'


def test_an_adapter_trained_on_line_separators_reads_back(tiny_model, tmp_path, capsys):
    """The issue's case: a prompt holding U+2028 (and U+0085) trains, then `corsa ask` and `corsa edit
    --adapter` read the adapter back, its record of edits equal to what was trained."""
    edits = [Edit(id=f"e{i}", prompt=f"Item{sep}{i} is", target_new=f"Q{i}{sep}x", target_old=f"A{i}")
             for i, sep in enumerate(["\u2028", "\x85", "\u2029"])]
    out = tmp_path / "o"
    Editor(tiny_model, **FAST).update(edits, out=out)
    again = Editor(tiny_model, adapter=out, **FAST)
    assert again.history == edits
    from corsa.loaders import load_edits

    assert [e.prompt for e in load_edits(out / "edits.jsonl")] == [e.prompt for e in edits]
    code, err = _cli(capsys, "ask", "--model", tiny_model, "--adapter", out, "--max-new-tokens", "2", "Hello")
    assert code == 0, err
    more = tmp_path / "more.jsonl"
    more.write_text(jsonl_text([{"id": "n", "prompt": "Another\u2028one is", "target_new": "Z", "target_old": "Y"}]))
    code, err = _cli(capsys, "edit", "--model", tiny_model, "--adapter", out, "--edits", more, "--out",
                     tmp_path / "o2", "--epochs", "1", "--no-check", "--quiet")
    assert code == 0, err


# --- any method's adapter is read by ask, eval and export ---------------------------------------------

def test_a_rome_adapter_is_read_by_ask_eval_and_export(tiny_model, tmp_path, capsys):
    out = tmp_path / "rome"
    subjects = [{**e, "subject": f"item {i}"} for i, e in enumerate(EDITS)]
    Editor(tiny_model, method="rome", progress=False, stats_tokens=512, target_steps=3).update(subjects, out=out)
    edits = tmp_path / "e.jsonl"
    edits.write_text(jsonl_text(subjects))
    code, err = _cli(capsys, "ask", "--model", tiny_model, "--adapter", out, "--max-new-tokens", "2", "Hello")
    assert code == 0, err
    code, err = _cli(capsys, "eval", "--model", tiny_model, "--adapter", out, "--edits", edits, "--out",
                     tmp_path / "m.json", "--no-base", "--quiet")
    assert code == 0, err
    code, err = _cli(capsys, "export", "--adapter", out, "--model", tiny_model, "--out", tmp_path / "x", "--quiet")
    assert code == 0, err
    # read by an Editor that names no method: it continues with the adapter's own, as `corsa edit` does
    editor = Editor(tiny_model, adapter=out, progress=False)
    assert editor.ask(["Hello"], max_new_tokens=2) and editor.scope_mode == "all" and editor.config.method == "rome"
    with pytest.raises(ConfigError, match="cannot continue it"):  # a trained method chosen explicitly: at once
        Editor(tiny_model, adapter=out, **FAST)


# --- two first calls at once ---------------------------------------------------------------------------

def test_two_threads_making_their_first_call_at_once(tiny_model):
    """A fresh process, two threads each loading a model at once: both load (the lazy import of
    transformers and PEFT is done under a lock)."""
    program = (
        "import threading, corsa\n"
        "errors = []\n"
        "def first():\n"
        "    try:\n"
        f"        corsa.Editor({tiny_model!r}, method='lora', progress=False)\n"
        "    except BaseException as e:\n"
        "        errors.append(repr(e))\n"
        "threads = [threading.Thread(target=first) for _ in range(2)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "print('errors', errors)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("errors []"), done.stdout + done.stderr[-2000:]


# --- a failed update leaves the adapter as it found it -------------------------------------------------

def test_a_failed_update_restores_the_adapter_it_started_from(tiny_model, tmp_path, monkeypatch):
    import corsa.step as step

    editor = Editor(tiny_model, **{**FAST, "epochs": 4})
    editor.update(EDITS)
    start = {n: p.detach().clone() for n, p in editor.model.named_parameters() if "lora_" in n}
    history = list(editor.history)
    real, calls = step.sft_loss, {"n": 0}

    def poisoned(lp, n):
        calls["n"] += 1
        loss = real(lp, n)
        return loss * float("nan") if calls["n"] > 1 else loss  # step 1 moves the adapter, step 2 fails

    monkeypatch.setattr(step, "sft_loss", poisoned)
    more = [{"id": "n0", "prompt": "The colour of thing 0 is", "target_new": "red", "target_old": "blue"},
            {"id": "n1", "prompt": "The colour of thing 1 is", "target_new": "green", "target_old": "blue"}]
    with pytest.raises(TrainingError):
        editor.update(more, out=tmp_path / "o")
    now = {n: p.detach() for n, p in editor.model.named_parameters() if "lora_" in n}
    assert all(torch.equal(start[n], now[n]) for n in start)
    assert editor.history == history and len(editor.updates) == 1
    from safetensors.torch import load_file

    kept = load_file(tmp_path / "o" / "adapter-last-good" / "adapter_model.safetensors")
    assert all(torch.equal(kept[k].cpu(), v.cpu()) for k, v in _saved_names(editor, start).items())
    monkeypatch.setattr(step, "sft_loss", real)
    editor.update(more)  # the next update trains from there
    assert len(editor.updates) == 2


def _saved_names(editor, weights):
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(editor.model)
    by_value = {}
    for key, value in state.items():
        for n, w in weights.items():
            if w.shape == value.shape and torch.equal(w, value.detach()):
                by_value[key] = w
                break
    assert len(by_value) == len(state)
    return by_value


# --- every file corsa reads is bounded ---------------------------------------------------------------

def test_fifos_devices_and_huge_files_are_refused_unread(tiny_model, tmp_path, capsys, run_dir):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    edits = tmp_path / "e.jsonl"
    edits.write_text(jsonl_text(EDITS))
    for config in (fifo, "/dev/zero"):
        code, err = _cli(capsys, "edit", "--config", config, "--edits", edits, "--out", tmp_path / "o")
        assert code == 2 and "not a regular file" in err and str(config) in err and "Traceback" not in err
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(2 << 20)
    code, err = _cli(capsys, "edit", "--config", big, "--edits", edits, "--out", tmp_path / "o")
    assert code == 2 and "more than the" in err
    for flag, extra in (("--anchors", ["--preserve", "0.1"]), ("--stats-corpus", [])):
        method = ["--method", "lora"] if flag == "--anchors" else ["--method", "rome"]
        for path in ("/dev/zero", fifo):
            code, err = _cli(capsys, "edit", "--model", tiny_model, "--edits", edits, "--out", tmp_path / "o2",
                             *method, flag, path, *extra, "--no-check", "--quiet")
            assert code == 2 and "not a regular file" in err and flag in err, (flag, path, err)
    adapter = _copy(run_dir, tmp_path / "fifo-adapter")
    weights = adapter / "adapter" / "adapter_model.safetensors"
    weights.unlink()
    os.mkfifo(weights)
    code, err = _cli(capsys, "ask", "--model", tiny_model, "--adapter", adapter, "Hello")
    assert code == 2 and "not a regular file" in err
    marker = adapter / "adapter" / "corsa-adapter.json"
    marker.unlink()
    os.symlink("/dev/zero", marker)
    code, err = _cli(capsys, "ask", "--model", tiny_model, "--adapter", adapter, "Hello")
    assert code == 2 and "not a regular file" in err


YAML_CASES = [
    ("alias bomb", "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                   "c: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n", "aliases"),
    ("key twice", "lr: 1e-3\nlr: 1e-2\n", "given twice"),
    ("octal seed", "seed: 010\n", "leading zero"),
    ("hex seed", "seed: 0x10\n", "another base"),
    ("sexagesimal", "epochs: 1:20\n", "another base"),
    ("not UTF-8", b"lr: 1e-3\n# \xff\xfe\n", "not UTF-8"),
    ("nan", "lr: .nan\n", "not a number"),
]


@pytest.mark.parametrize("name,text,words", YAML_CASES, ids=[c[0] for c in YAML_CASES])
def test_config_files_are_parsed_strictly(name, text, words, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, err = _cli(capsys, "edit", "--config", config, "--edits", tmp_path / "e.jsonl", "--out", tmp_path / "o")
    assert code == 2 and words in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_a_plain_config_still_works(tmp_path):
    from corsa.cli.config_file import _read
    from corsa.cli.main import _commands, build_parser
    from corsa.cli import config_file

    parser = _commands(build_parser())["edit"]
    config = tmp_path / "c.yaml"
    config.write_text("lr: 1e-3\nseed: 10\nepochs: 0\nout: ~/x\n")
    tokens = _read(config, "edit", config_file._flags(parser))
    assert tokens == ["--lr", "1e-3", "--seed", "10", "--epochs", "0", "--out", str(Path("~/x").expanduser())]


# --- sizes are bounded before anything is allocated ----------------------------------------------------

def test_a_huge_lora_rank_is_refused_before_loading(tmp_path, capsys, tiny_model, monkeypatch):
    edits = tmp_path / "e.jsonl"
    edits.write_text(jsonl_text(EDITS))
    code, err = _cli(capsys, "edit", "--model", tmp_path / "none", "--edits", edits, "--out", tmp_path / "o",
                     "--lora-r", "100000000")
    assert code == 2 and "lora_r" in err and "65,536" in err
    import corsa.adapter as adapters

    monkeypatch.setattr(adapters, "available_bytes", lambda device: 2**20)  # 1 MiB free
    with pytest.raises(ConfigError, match=r"needs about .* GiB to train .* free; choose a smaller --lora-r"):
        Editor(tiny_model, **{**FAST, "lora_r": 4096})


# --- tracebacks that are now errors naming the file and the field --------------------------------------

def _tampered(run_dir, tmp_path, name, edit):
    folder = _copy(run_dir, tmp_path / name)
    edit(folder / "adapter")
    return folder


def _set_json(path, change):
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


MARKER_CASES = [
    ("method list", lambda d: {**d, "method": ["lora"]}, "field 'method'"),
    ("marker list", lambda d: [d], "holds list"),
    ("unknown scope", lambda d: {**d, "scope": "everything"}, "field 'scope'"),
    ("fingerprint number", lambda d: {**d, "base_fingerprint": 7}, "field 'base_fingerprint'"),
    ("escape in method", lambda d: {**d, "method": "\x1b[31mlora"}, "field 'method'"),
]


@pytest.mark.parametrize("name,change,words", MARKER_CASES, ids=[c[0] for c in MARKER_CASES])
def test_a_tampered_marker_is_an_error_naming_the_file_and_field(name, change, words, run_dir, tiny_model, tmp_path,
                                                                 capsys):
    folder = _tampered(run_dir, tmp_path, "t", lambda a: _set_json(a / "corsa-adapter.json", change))
    code, err = _cli(capsys, "ask", "--model", tiny_model, "--adapter", folder, "Hello")
    assert code == 2 and "corsa-adapter.json" in err and words in err and "Traceback" not in err, err
    assert "\x1b" not in err


CONFIG_CASES = [
    ("r text", lambda d: {**d, "r": "x"}, "field 'r'"),
    ("r float", lambda d: {**d, "r": 2.5}, "field 'r'"),
    ("alpha nan", lambda d: {**d, "lora_alpha": "nan"}, "field 'lora_alpha'"),
    ("targets number", lambda d: {**d, "target_modules": 3}, "field 'target_modules'"),
    ("config list", lambda d: [d], "holds list"),
    ("not lora", lambda d: {**d, "peft_type": "IA3"}, "field 'peft_type'"),
]


@pytest.mark.parametrize("name,change,words", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_a_tampered_adapter_config_is_an_error(name, change, words, run_dir, tiny_model, tmp_path, capsys):
    folder = _tampered(run_dir, tmp_path, "c", lambda a: _set_json(a / "adapter_config.json", change))
    code, err = _cli(capsys, "ask", "--model", tiny_model, "--adapter", folder, "Hello")
    assert code == 2 and "adapter_config.json" in err and words in err and "Traceback" not in err, err


def test_another_base_models_adapter_is_refused_once_its_marker_is_gone(run_dir, tiny_model, tmp_path, capsys):
    from corsa.adapter import load_existing
    from corsa.models import load_model

    folder = _copy(run_dir, tmp_path / "other-base")
    (folder / "adapter" / "corsa-adapter.json").unlink()
    _set_json(folder / "adapter" / "adapter_config.json",
              lambda d: {**d, "base_model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"})
    model, _ = load_model(tiny_model)
    with pytest.raises(ModelError, match="was made for Qwen/Qwen2.5-0.5B-Instruct"):
        load_existing(model, folder, fingerprint="x", model_name="HuggingFaceTB/SmolLM2-135M-Instruct")
    model, _ = load_model(tiny_model)
    load_existing(model, folder, fingerprint="x", model_name="Qwen/Qwen2.5-0.5B-Instruct")  # its own base: loads


@pytest.mark.parametrize("model", [123, None, ("a", "b"), (), "", 2.5])
def test_editor_refuses_what_is_no_model(model):
    with pytest.raises(ConfigError, match="model"):
        Editor(model)


@pytest.mark.parametrize("options,words", [
    ({"lora_r": 2.5}, "lora_r"), ({"epochs": "3"}, "epochs"), ({"lr": "fast"}, "lr"), ({"seed": True}, "seed"),
    ({"method": ["lora"]}, "method"), ({"method": "lora", "sft_weight": 0.0}, "--sft-weight 0"),
    ({"lora_r": 100_000_000}, "lora_r")])
def test_config_values_of_the_wrong_kind_are_errors(options, words):
    from corsa import EditConfig

    with pytest.raises(ConfigError, match=words):
        EditConfig(**options)


def test_a_70_bit_sample_seed_is_refused(tmp_path, capsys):
    edits = tmp_path / "e.jsonl"
    edits.write_text(jsonl_text(EDITS))
    code, err = _cli(capsys, "eval", "--model", tmp_path / "none", "--edits", edits, "--out", tmp_path / "m.json",
                     "--sample", "2", "--sample-seed", str(2**70))
    assert code == 2 and "--sample-seed" in err and "Traceback" not in err


# --- accepted when it should have been refused ---------------------------------------------------------

def test_a_tampered_record_of_trained_edits_is_refused(run_dir, tiny_model, tmp_path, capsys):
    for name, line in (("empty prompt", {"id": "e0", "prompt": "", "target_new": "Q"}),
                       ("number", {"id": "e0", "prompt": 5, "target_new": "Q"}),
                       ("combining only", {"id": "e0", "prompt": "P is", "target_new": "\u0301\u0302"}),
                       ("unknown key", {"id": "e0", "prompt": "P is", "target_new": "Q", "evil": 1})):
        folder = _copy(run_dir, tmp_path / name.replace(" ", "-"))
        (folder / "adapter" / "trained-edits.jsonl").write_text(jsonl_line(line))
        code, err = _cli(capsys, "ask", "--model", tiny_model, "--adapter", folder, "Hello")
        assert code == 2 and "trained-edits.jsonl" in err and "damaged" in err, (name, err)


def test_edit_objects_from_python_get_the_loaders_checks(tiny_model):
    from corsa.api import as_edits

    good = Edit(id="a", prompt="P is", target_new="Q", target_old="R")
    bad = {
        "empty prompt": [Edit(id="a", prompt=" ", target_new="Q")],
        "combining y+": [Edit(id="a", prompt="P is", target_new="\u0301")],
        "two answers": [good, Edit(id="b", prompt="p IS", target_new="Z")],
        "same id": [good, Edit(id="a", prompt="Other is", target_new="Z")],
        "paraphrase of another": [good, Edit(id="b", prompt="O is", target_new="Z", paraphrases=("P is",))],
        "locality of another": [good, Edit(id="b", prompt="O is", target_new="Z", locality=(Probe("P is", "R"),))],
        "number id": [Edit(id=3, prompt="P is", target_new="Q")],
    }
    for name, edits in bad.items():
        with pytest.raises(DataError):
            as_edits(edits)
    assert as_edits([good]) == [good]
    filled = Edit(id="f", prompt="P is", target_new="Q", target_old="Q")  # a y⁻ the model filled may equal y⁺
    assert as_edits([filled]) == [filled]
    with pytest.raises(DataError, match="wrap it in a list"):
        as_edits(EDITS[0])


@pytest.mark.parametrize("records,field", [
    ([{"id": "a", "prompt": "P is", "target_new": "Q"},
      {"id": "b", "prompt": "O is", "target_new": "Z", "paraphrases": ["P is"]}], "paraphrases[0]"),
    ([{"id": "b", "prompt": "O is", "target_new": "Z", "locality": [{"prompt": "P is", "answer": "R"}]},
      {"id": "a", "prompt": "P is", "target_new": "Q"}], "prompt"),
    ([{"id": "a", "prompt": "P is", "target_new": "\u0301\u0302"}], "target_new"),
])
def test_edit_files_with_probe_conflicts_or_invisible_answers_are_refused(records, field, tmp_path):
    from corsa.loaders import load_edits

    path = tmp_path / "e.jsonl"
    path.write_text(jsonl_text(records))
    with pytest.raises(DataError, match=f"field '{field.replace('[', '.').replace(']', '.')}'"):
        load_edits(path)


def test_sft_weight_zero_with_lora_is_refused_on_the_command_line(tmp_path, capsys):
    edits = tmp_path / "e.jsonl"
    edits.write_text(jsonl_text(EDITS))
    code, err = _cli(capsys, "edit", "--model", tmp_path / "none", "--edits", edits, "--out", tmp_path / "o",
                     "--method", "lora", "--sft-weight", "0")
    assert code == 2 and "--sft-weight 0" in err and not (tmp_path / "o").exists()


def test_an_unknown_method_in_a_run_record_is_refused_escaped(run_dir, tiny_model, tmp_path, capsys):
    """`corsa edit --adapter` prints the method it continues with: from a tampered run record (no marker
    method) an escape sequence never reaches the terminal, and an unknown method is refused."""
    folder = _copy(run_dir, tmp_path / "escape")
    _set_json(folder / "adapter" / "corsa-adapter.json", lambda d: {k: v for k, v in d.items() if k != "method"})
    _set_json(folder / "run.json", lambda d: {**d, "config": {**d["config"], "method": "\x1b]0;owned\x07lora"}})
    edits = tmp_path / "e.jsonl"
    edits.write_text(jsonl_text(EDITS))
    code, err = _cli(capsys, "edit", "--model", tiny_model, "--adapter", folder, "--edits", edits, "--out",
                     tmp_path / "o", "--no-check")
    assert code == 2 and "not one of corsa's" in err and "\x1b" not in err and "\x07" not in err


# --- unclear messages ------------------------------------------------------------------------------------

def test_out_given_an_option_says_so(tmp_path, capsys):
    edits = tmp_path / "e.jsonl"
    edits.write_text(jsonl_text(EDITS))
    code = None
    with pytest.raises(SystemExit) as stop:
        main(["edit", "--edits", str(edits), "--out", "lr=1e-3"])
    code = stop.value.code
    err = capsys.readouterr().err
    assert code == 2 and "reads as an option" in err


def test_a_long_answer_is_named_as_the_answer(tiny_model):
    editor = Editor(tiny_model, **FAST)
    huge = Edit(id="big", prompt="P is", target_new="word " * 5000, target_old="R")
    with pytest.raises(DataError, match="field 'target_new'"):
        editor.update([huge])


def test_a_relative_model_folder_is_recorded_as_an_absolute_path(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(Path(tiny_model).parent)
    editor = Editor("./" + Path(tiny_model).name, **FAST)
    assert editor.model_name == str(Path(tiny_model).resolve())


def test_bench_data_and_a_code_split_are_read_bounded(tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code, err = _cli(capsys, "bench", "--model", tmp_path / "none", "--data", "/dev/zero", "--methods", "lora",
                     "--edits", "2", "--updates", "1", "--out", tmp_path / "b")
    assert code == 2 and "--data /dev/zero is not a regular file" in err
    arena = Path(__file__).parent / "fixtures" / "arena-ungrouped.jsonl"
    for split, words in ((fifo, "not a regular file"), ("/dev/zero", "not a regular file")):
        code, err = _cli(capsys, "eval", "--model", tmp_path / "none", "--edits", arena, "--out", tmp_path / "m.json",
                         "--code-split", split)
        assert code == 2 and words in err and "--code-split" in err and "Traceback" not in err, err
    bad = tmp_path / "tasks.json"
    bad.write_text('{"train": "all"}')
    code, err = _cli(capsys, "eval", "--model", tmp_path / "none", "--edits", arena, "--out", tmp_path / "m.json",
                     "--code-split", bad)
    assert code == 2 and "not a code bench's tasks.json" in err
