"""Interruptions: a real SIGKILL or Ctrl-C mid-update, then the same command resumes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from corsa.cli import main

pytestmark = pytest.mark.slow  # each test starts real processes (and kills some)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from corsa.testing import save_tiny_llama

    root = tmp_path_factory.mktemp("resume")
    model = str(save_tiny_llama(root / "model", seed=0))
    edits = root / "edits.jsonl"
    edits.write_text("".join(json.dumps({"id": f"e{i}", "prompt": f"Fact number {i} is", "target_new": f"N{i}",
                                         "target_old": f"O{i}"}) + "\n" for i in range(9)))
    return root, model, str(edits)


def command(model, edits, out, epochs=40):
    return ["edit", "--model", model, "--edits", edits, "--out", str(out), "--updates", "3", "--method", "corsa",
            "--epochs", str(epochs), "--batch-size", "2", "--grad-accum", "1", "--lr", "5e-3", "--no-check", "--quiet"]


def adapter(out):
    return load_file(out / "adapter" / "adapter_model.safetensors")


def start(argv):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    # A background job of a non-interactive shell (as CI may run us) inherits SIGINT ignored;
    # give the child the default disposition so Ctrl-C reaches it as it would in a terminal.
    return subprocess.Popen([sys.executable, "-m", "corsa.cli", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_until_training(out, update, proc, timeout=300):
    """Block until update `update` has logged a step (so a kill lands mid-update)."""
    log = out / f"update-{update}" / "log.partial.jsonl"  # the log of the update under way
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.exists() and log.read_text().count("\n") >= 2:
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError("training never reached the update")


def test_sigkill_mid_update_then_rerun_gives_the_uninterrupted_result(setup, capsys):
    root, model, edits = setup
    reference = root / "straight"
    assert main(command(model, edits, reference)) == 0
    expected = adapter(reference)

    out = root / "killed"
    proc = start(command(model, edits, out))
    wait_until_training(out, 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    progress = json.loads((out / "progress.json").read_text())
    assert progress["completed"] == 1
    assert not (out / "update-2" / "adapter").exists()
    assert not (out / "adapter").exists()

    capsys.readouterr()
    assert main(command(model, edits, out)) == 0
    assert "resuming: updates 1–1 of 3 are complete" in capsys.readouterr().out
    resumed = adapter(out)
    assert resumed.keys() == expected.keys()
    for k in expected:
        assert torch.allclose(resumed[k], expected[k], atol=1e-6), k
    for k in (1, 2, 3):
        assert (out / f"update-{k}" / "run.json").exists()
    # no temporary files left behind by the kill
    assert not [p for p in out.rglob("*.tmp")]


def test_rerun_with_other_settings_is_refused(setup, capsys):
    root, model, edits = setup
    out = root / "straight"  # complete from the test above, or made now
    if not (out / "progress.json").exists():
        assert main(command(model, edits, out)) == 0
    capsys.readouterr()
    assert main(command(model, edits, out) + ["--lr", "1e-2"]) == 2
    err = capsys.readouterr().err
    assert "other settings: config.lr: saved 0.005, now 0.01" in err  # the key, and both values


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(setup):
    root, model, edits = setup
    out = root / "interrupted"
    proc = start(command(model, edits, out, epochs=200))
    wait_until_training(out, 2, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in stderr
    assert "Rerun the same command to resume" in stderr
    assert json.loads((out / "progress.json").read_text())["completed"] == 1


def bench_command(model, edits, out):
    return ["bench", "--model", model, "--data", edits, "--methods", "lora,corsa", "--edits", "6", "--updates", "3",
            "--seed", "0", "--epochs", "30", "--batch-size", "2", "--grad-accum", "1", "--lr", "5e-3",
            "--quiet", "--out", str(out)]


def test_sigkill_mid_bench_then_rerun_gives_the_uninterrupted_results(setup, capsys):
    root, model, edits = setup
    straight = root / "bench-straight"
    assert main(bench_command(model, edits, straight)) == 0
    expected = json.loads((straight / "results.json").read_text())

    out = root / "bench-killed"
    proc = start(bench_command(model, edits, out))
    # kill while corsa trains its second update (lora is finished, corsa update 1 too)
    log = out / "corsa"
    deadline = time.time() + 300
    while time.time() < deadline:
        if (log / "update-1" / "eval.json").exists() and any(log.glob(".update-2.*.tmp/log.partial.jsonl")):
            break
        if proc.poll() is not None:
            raise AssertionError(f"bench ended early: {proc.communicate()}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (log / "update-2").exists()

    capsys.readouterr()
    assert main(bench_command(model, edits, out)) == 0
    resumed = json.loads((out / "results.json").read_text())
    for method in ("lora", "corsa"):
        a, b = expected["methods"][method], resumed["methods"][method]
        assert a["retention"] == b["retention"]
        for key, value in a["final"].items():
            assert b["final"][key] == pytest.approx(value, abs=1e-6), (method, key)


def test_a_run_saved_before_an_option_existed_resumes_where_its_training_is_unchanged(tmp_path):
    """Configurations saved by corsa at a5132da (before keep_subject, when anchor_batch was a plain
    setting): lora, corsa and memit trained exactly as they do now, so they resume; corsa-lifelong's
    defaults changed since (it keeps three questions per subject), so its rerun is refused by name."""
    import json
    from pathlib import Path

    from corsa.config import EditConfig, upgraded
    from corsa.errors import ConfigError
    from corsa.resume import check_same

    old = json.loads((Path(__file__).parent / "fixtures" / "config-a5132da.json").read_text())
    for method in ("lora", "corsa", "memit"):
        (tmp_path / method).mkdir()
        (tmp_path / method / "config.json").write_text(json.dumps(old[method]))
        check_same(tmp_path / method / "config.json", EditConfig(method=method).resolved(), "options", "",
                   saved_as=upgraded)
    (tmp_path / "life").mkdir()
    (tmp_path / "life" / "config.json").write_text(json.dumps(old["corsa-lifelong"]))
    with pytest.raises(ConfigError, match="resolved.keep_subject: saved 0, now 3"):
        check_same(tmp_path / "life" / "config.json", EditConfig(method="corsa-lifelong").resolved(), "options", "",
                   saved_as=upgraded)
    # without reading it as today's code writes it, even lora's would be refused
    with pytest.raises(ConfigError, match="anchor_batch"):
        check_same(tmp_path / "lora" / "config.json", EditConfig(method="lora").resolved(), "options", "")
