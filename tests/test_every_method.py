"""Every row of the method table through the same life: train, save, load, continue, resume.

PEFT-style: one battery, parametrised over `corsa.METHODS`, so a new row is covered the day it
is added (the 2-process equivalence of every row is in test_distributed.py).
"""

import pytest
import torch
from safetensors.torch import load_file

from corsa import METHODS, EditConfig, Editor
from corsa.records import Edit
from corsa.testing import FAST, save_tiny_llama



def _edits(start, n):
    return [Edit(id=f"e{i}", prompt=f"The code of item {i} is", target_new=f"Q{i}", target_old=f"A{i}",
                 subject=f"item {i}") for i in range(start, start + n)]


def _lora(editor):
    return {n: p.detach().clone() for n, p in editor.model.named_parameters() if "lora_" in n}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return str(save_tiny_llama(tmp_path_factory.mktemp("every") / "model", seed=0))


# the tiny model's corpus keys fill every direction at AlphaEdit's default threshold (no free one)
EXTRA = {"alphaedit": {"nullspace_threshold": 0.5}}


def _options(method):
    """FAST for a trained row; for a locate-then-edit row (no training: it refuses those) its own."""
    if METHODS[method].solver is None:
        return FAST
    return {"progress": False, "stats_tokens": 512, "target_steps": 3, **EXTRA.get(method, {})}


@pytest.mark.parametrize("method", list(METHODS))
def test_train_save_load_continue(method, base, tmp_path):
    first = Editor(base, method=method, **_options(method))
    before = _lora(first)
    first.update(_edits(0, 3), out=tmp_path / "u1")
    trained = _lora(first)
    # it trained (or solved): every B of the adapter carries a change, and the change reaches the
    # model's next-token distributions on the edit prompts, not only its weights
    assert all(t.abs().max() > 0 for n, t in trained.items() if "lora_B" in n)
    assert all(not torch.equal(trained[n], before[n]) for n in trained if "lora_B" in n)
    ids = first.tokenizer([e.prompt for e in _edits(0, 3)], return_tensors="pt").input_ids
    with torch.no_grad():
        edited = first.model(input_ids=ids).logits[:, -1].log_softmax(-1)
        with first.model.disable_adapter():
            unedited = first.model(input_ids=ids).logits[:, -1].log_softmax(-1)
    assert (edited - unedited).abs().amax(-1).min() > 1e-3  # every edit prompt's distribution moved
    saved = load_file(tmp_path / "u1" / "adapter" / "adapter_model.safetensors")
    assert len(saved) == len(trained)
    # loaded back: the same weights, the same answers, the same record of edits
    again = Editor(base, adapter=tmp_path / "u1", method=method, **_options(method))
    assert all(torch.equal(a, b) for a, b in zip(_lora(again).values(), trained.values()))
    prompts = [e.prompt for e in _edits(0, 3)] + ["Something unrelated is"]
    assert again.ask(prompts) == first.ask(prompts)
    assert [e.id for e in again.history] == ["e0", "e1", "e2"]
    # continued: the same adapter keeps training, and its record grows
    again.update(_edits(3, 2), out=tmp_path / "u2")
    assert any(not torch.equal(a, b) for a, b in zip(_lora(again).values(), trained.values()))
    assert [e.id for e in Editor(base, adapter=tmp_path / "u2", method=method, **_options(method)).history] == \
        ["e0", "e1", "e2", "e3", "e4"]


@pytest.mark.parametrize("method", [m for m, row in METHODS.items() if row.solver is None])  # trained rows
def test_an_interrupted_sequence_resumes_to_the_uninterrupted_adapter(method, base, tmp_path, monkeypatch):
    from corsa.updates import run_updates, settings_of

    edits = _edits(0, 4)
    cfg = EditConfig(method=method, **{k: v for k, v in FAST.items() if k != "progress"})

    def make(adapter=None):
        return Editor(base, adapter=adapter, config=cfg, progress=False)

    settings = settings_of(base, None, cfg, edits, 2)
    straight, _ = run_updates(make, edits, 2, tmp_path / "straight", settings, log=lambda *_: None)
    want = _lora(straight)
    # the second update is stopped in the middle of its training, after one optimizer step, as a
    # Ctrl-C would stop it (a SIGKILL at any point: test_resume.py), then the same call resumes
    import corsa.engine as engine

    real_update, real_step = Editor.update, engine.corsa_step
    state = {"update": 0, "steps": 0}

    def counted_update(self, *a, **k):
        state["update"] += 1
        return real_update(self, *a, **k)

    def step(*a, **k):
        if state["update"] == 2:
            state["steps"] += 1
            if state["steps"] == 2:
                raise KeyboardInterrupt
        return real_step(*a, **k)

    monkeypatch.setattr(Editor, "update", counted_update)
    monkeypatch.setattr(engine, "corsa_step", step)
    with pytest.raises(KeyboardInterrupt):
        run_updates(make, edits, 2, tmp_path / "resumed", settings, log=lambda *_: None)
    assert state["steps"] == 2  # it stopped inside update 2, one step taken
    assert (tmp_path / "resumed" / "update-1" / "adapter").is_dir()
    assert not (tmp_path / "resumed" / "update-2" / "adapter").exists()
    monkeypatch.setattr(Editor, "update", real_update)
    monkeypatch.setattr(engine, "corsa_step", real_step)
    resumed, _ = run_updates(make, edits, 2, tmp_path / "resumed", settings, log=lambda *_: None)
    got = _lora(resumed)
    assert got.keys() == want.keys()
    assert max((got[k] - want[k]).abs().max().item() for k in got) < 1e-6


def test_a_continued_adapter_keeps_its_lineage(base, tmp_path):
    import json

    Editor(base, method="lora", **FAST).update(_edits(0, 2), out=tmp_path / "first")
    again = Editor(base, adapter=tmp_path / "first", method="lora", **FAST)
    assert [u.index for u in again.updates] == [0]
    record = again.update(_edits(2, 2), out=tmp_path / "second")
    assert record.index == 1  # the next index, and so the next update's seeds
    run = json.loads((tmp_path / "second" / "run.json").read_text())
    assert [(u["index"], u["edit_ids"]) for u in run["updates"]] == [(1, ["e0", "e1"]), (2, ["e2", "e3"])]
    assert run["parent_adapter"] == str(tmp_path / "first" / "adapter")


def test_a_sequence_on_a_continued_adapter_numbers_on_and_can_be_continued(base, tmp_path):
    import json

    from corsa.cli import main

    Editor(base, method="lora", **FAST).update(_edits(0, 2), out=tmp_path / "first")
    data = tmp_path / "more.jsonl"
    data.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in _edits(2, 2)))
    flags = ["--model", base, "--method", "lora", "--epochs", "2", "--batch-size", "2", "--lr", "1e-2",
             "--no-edit-stop", "--no-check", "--quiet"]
    assert main(["edit", "--edits", str(data), "--adapter", str(tmp_path / "first"), "--updates", "2",
                 "--out", str(tmp_path / "seq"), *flags]) == 0
    run = json.loads((tmp_path / "seq" / "run.json").read_text())  # published beside OUT/adapter
    assert [u["index"] for u in run["updates"]] == [1, 2, 3]
    assert [u.index for u in Editor(base, adapter=tmp_path / "seq", method="lora", **FAST).updates] == [0, 1, 2]
    # a damaged run record does not stop the adapter from loading: a new lineage starts
    (tmp_path / "first" / "run.json").write_text('{"updates": [{"index": "x"}]}')
    assert Editor(base, adapter=tmp_path / "first", method="lora", **FAST).updates == []


def test_every_row_resolves_its_options_from_the_table():
    """A row's options come from the row: off where it lacks the part, its own default, refused when set."""
    from corsa.errors import ConfigError
    from corsa.methods import OPTIONS
    from corsa.pcgrad import COMBINERS
    from corsa.scope import MODES

    # the table names every combiner the engine has, and nothing else
    assert (set(OPTIONS["combine"].choices) | {m.combine for m in METHODS.values()}) - {"none"} == set(COMBINERS)
    assert OPTIONS["scope"].choices == MODES
    for name, row in METHODS.items():
        cfg = EditConfig(method=name)
        assert cfg.sam_rho == (0.05 if row.sam else 0.0)
        assert cfg.dpo_beta == (0.1 if row.dpo else None)
        assert cfg.combiner == ("pcgrad" if row.combine == "pcgrad" else row.combine)
        for option, spec in OPTIONS.items():
            if row.uses(option):
                assert cfg.value(option) == row.defaults.get(option, spec.default), (name, option)
            else:
                assert cfg.value(option) == (row.combine if option == "combine" else spec.off), (name, option)
                with pytest.raises(ConfigError, match=spec.flag):
                    EditConfig(method=name, **{option: {"rho": 0.1, "beta": 0.2, "combine": "pcgrad",
                                                        "negatives": ("online",), "sharpness": "reuse",
                                                        "max_negatives": 2, "replay": "all", "train_eos": True,
                                                        "preserve": 1.0, "preserve_first": 1.0, "swap_anchors": 2, "edit_weight": "slot", "margin_target": 5.0,
                                                        "keep_subject": 2, "keep_earlier": 2, "anchor_batch": 4, "rephrase": 1, "rephrase_dpo": True,
                                                        "retest_every": 2, "layers": "1", "clamp_factor": 2.0,
                                                        "kl_weight": 0.1, "target_steps": 5, "target_lr": 0.1,
                                                        "stats_corpus": "corpus.txt", "stats_tokens": 1000,
                                                        "edit_rank": 8, "mom2_weight": 100.0,
                                                        "nullspace_threshold": 0.1, "alphaedit_l2": 0.5}[option]})
    assert EditConfig(method="corsa-lifelong").value("margin_target") == 12.0
    with pytest.raises(ConfigError, match="invalid --replay some: choose none, all or lost"):
        EditConfig(replay="some")
