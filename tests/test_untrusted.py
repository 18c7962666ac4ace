"""Untrusted files: no model code is executed, no pickle is loaded, no write escapes --out."""

import json

import pytest

from corsa import ModelError
from corsa.cli import main
from corsa.models import load_model
from corsa.testing import save_tiny_llama


def test_model_code_in_a_folder_is_never_executed(tmp_path):
    folder = save_tiny_llama(tmp_path / "model", seed=0)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "EVIL_RAN"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                    "from transformers import LlamaConfig as EvilConfig, LlamaForCausalLM as EvilModel\n")
    model, _ = load_model(str(folder))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert not marker.exists()


def test_pickle_model_weights_are_refused(tmp_path):
    import torch

    folder = save_tiny_llama(tmp_path / "model", seed=0)
    state = load_model(str(folder))[0].state_dict()
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match="pickle"):
        load_model(str(folder))


def test_edit_ids_cannot_write_outside_the_output_folder(tmp_path, capsys):
    model = str(save_tiny_llama(tmp_path / "model", seed=0))
    edits = tmp_path / "edits.jsonl"
    edits.write_text("".join(json.dumps({"id": f"../../escape-{i}", "prompt": f"Fact {i} is", "target_new": "A",
                                         "target_old": "B", "subject": "/etc/passwd"}) + "\n" for i in range(2)))
    out = tmp_path / "deep" / "out"
    before = set(tmp_path.rglob("*"))
    assert main(["edit", "--model", model, "--edits", str(edits), "--out", str(out), "--updates", "2",
                 "--epochs", "1", "--no-check", "--quiet"]) == 0
    new = set(tmp_path.rglob("*")) - before
    assert new and all(p == out.parent or out in p.parents or p == out for p in new), sorted(new)
