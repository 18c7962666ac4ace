"""`corsa export`: the merged model is the edited model, loads with plain transformers, and says what it holds."""

import json

import pytest
import torch

from corsa.cli import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from corsa.testing import save_tiny_llama

    root = tmp_path_factory.mktemp("export")
    model = str(save_tiny_llama(root / "model", seed=0))
    edits = root / "e.jsonl"
    edits.write_text("".join(json.dumps({"prompt": f"The capital of land {i} is", "target_new": f"C{i}",
                                         "target_old": f"T{i}"}) + "\n" for i in range(3)))
    runs = {}
    for scope in ("all", "subject"):
        runs[scope] = root / f"run-{scope}"
        assert main(["edit", "--model", model, "--edits", str(edits), "--out", str(runs[scope]), "--epochs", "3",
                     "--lr", "1e-2", "--scope", scope, "--no-check", "--quiet"]) == 0
    return root, model, runs


def test_the_merged_model_gives_the_adapters_logits_and_loads_with_plain_transformers(setup, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from corsa.api import Editor

    root, model, runs = setup
    out = root / "merged"
    assert main(["export", "--adapter", str(runs["all"]), "--out", str(out), "--quiet"]) == 0
    plain = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.chat_template  # the chat template travels with the export
    editor = Editor(model, adapter=runs["all"], progress=False)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "The capital of land 1 is"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        merged_logits = plain(input_ids=ids).logits
        adapter_logits = editor.model(input_ids=ids).logits
        with editor.model.disable_adapter():
            base_logits = editor.model(input_ids=ids).logits
    assert torch.allclose(merged_logits, adapter_logits, atol=1e-4)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-3)  # the edit is in the weights

    card = (out / "README.md").read_text()
    assert "The capital of land 2 is" in card and "C2" in card and "| method | corsa |" in card
    record = json.loads((out / "corsa-export.json").read_text())
    assert record["edits"] == 3 and record["scope"] == "all" and len(record["adapter_sha256"]) == 64


def test_a_scoped_adapter_is_exported_only_when_asked(setup, capsys):
    root, model, runs = setup
    out = root / "scoped"
    assert main(["export", "--adapter", str(runs["subject"]), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--all-prompts" in err and "cannot keep that gate" in err and not out.exists()
    assert main(["export", "--adapter", str(runs["subject"]), "--out", str(out), "--quiet", "--all-prompts"]) == 0
    assert "answers every prompt with the edits applied" in (out / "README.md").read_text()


def test_export_keeps_the_users_files_and_replaces_its_own(setup, capsys):
    root, model, runs = setup
    out = root / "again"
    assert main(["export", "--adapter", str(runs["all"]), "--out", str(out), "--quiet"]) == 0
    stale = out / "model-00001-of-00002.safetensors"  # a shard of an earlier, larger export: its marker lists it
    stale.write_bytes(b"old")
    record = json.loads((out / "corsa-export.json").read_text())
    record["files"][stale.name] = {"bytes": 3, "sha256": __import__("hashlib").sha256(b"old").hexdigest()}
    (out / "corsa-export.json").write_text(json.dumps(record))
    assert main(["export", "--adapter", str(runs["all"]), "--out", str(out), "--quiet"]) == 0
    assert not stale.exists() and (out / "model.safetensors").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    (out / "notes.txt").write_text("mine")
    assert main(["export", "--adapter", str(runs["all"]), "--out", str(out), "--quiet"]) == 2
    assert "did not write" in capsys.readouterr().err and (out / "notes.txt").read_text() == "mine"


def test_the_base_model_is_named_by_its_hub_id_when_known():
    from corsa.models import hub_id

    assert hub_id("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert hub_id("/some/local/folder") is None and hub_id("./model") is None


# --- round three (issue 34): an export folder is corsa's only by proof ----------------------------

def test_an_export_folder_is_corsas_only_by_its_marker_and_the_files_it_lists(setup, capsys):
    """A transformers model folder, a user's README beside a file called corsa-export.json, a listed file
    the user changed, an unlisted file beside a whole export: each refused before the model loads,
    naming the path, every file unchanged. An earlier version's export (a marker without `files`) is
    still replaced."""
    from corsa.ownership import foreign_files

    root, model, runs = setup
    ours = root / "proof"
    assert main(["export", "--adapter", str(runs["all"]), "--out", str(ours), "--quiet"]) == 0
    listed = json.loads((ours / "corsa-export.json").read_text())["files"]
    assert set(listed) == {p.name for p in ours.iterdir()} - {"corsa-export.json"}
    cases = {}
    hf = root / "hf-model"  # a plain transformers folder: corsa's names, but no marker
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "llama"}')
    (hf / "model.safetensors").write_bytes(b"weights")
    cases["hf"] = (hf, "config.json")
    fake = root / "fake-marker"  # a user's README beside a file that happens to be called corsa-export.json
    fake.mkdir()
    (fake / "corsa-export.json").write_text('{"note": "mine"}')
    (fake / "README.md").write_text("my notes")
    cases["fake"] = (fake, "README.md")
    changed = root / "changed"  # a listed file the user rewrote
    assert main(["export", "--adapter", str(runs["all"]), "--out", str(changed), "--quiet"]) == 0
    (changed / "README.md").write_text("my own card")
    cases["changed"] = (changed, "README.md")
    for name, (folder, named) in cases.items():
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        assert named in foreign_files(folder, "export"), name
        assert main(["export", "--adapter", str(runs["all"]), "--out", str(folder), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "did not write" in err and str(folder / named) in err and "Traceback" not in err, name
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before, name
    old = root / "older"  # an export of an earlier corsa: its marker has no file list, its card is corsa's
    assert main(["export", "--adapter", str(runs["all"]), "--out", str(old), "--quiet"]) == 0
    record = json.loads((old / "corsa-export.json").read_text())
    del record["files"]
    (old / "corsa-export.json").write_text(json.dumps(record))
    assert foreign_files(old, "export") == []
    (old / "README.md").write_text("my notes")
    assert foreign_files(old, "export") == ["README.md"]
