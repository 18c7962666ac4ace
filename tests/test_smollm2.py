"""Integration: CoRSA edits real facts of the real SmolLM2-135M-Instruct, offline, on CPU."""

import pytest
import torch

from corsa import Editor, load_edits
from corsa.cli import SAMPLE
from corsa.metrics import contains

pytestmark = pytest.mark.slow

IDS = ("cf-7005", "cf-231", "cf-16575", "cf-4664")  # Iraq → Milan, Italy → Korean, iPhone → Boeing, Jordan → soccer
UNRELATED = "What is the capital of France?"


def took(answer: str, target: str) -> bool:
    return contains(answer, target)


@pytest.fixture(scope="module")
def edits():
    torch.set_num_threads(2)
    chosen = [e for e in load_edits(SAMPLE) if e.id in IDS]
    assert len(chosen) == 4
    return chosen


def edit_with_defaults(method: str, edits, out):
    editor = Editor("smollm2-135m", method=method, progress=False)  # the defaults, as a new user runs it
    before = editor.ask([e.prompt for e in edits] + [UNRELATED], base=True)
    assert not any(took(a, e.target_new) for a, e in zip(before, edits)), before
    assert "paris" in before[-1].lower()
    editor.update(edits, out=out)
    after = editor.ask([e.prompt for e in edits] + [UNRELATED])
    switched = [e.id for a, e in zip(after, edits) if took(a, e.target_new)]
    assert len(switched) >= 3, list(zip(after, edits))
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    return before, after


def test_corsa_switches_real_counterfact_answers(edits, tmp_path):
    # The paper's row edits the prompts; what it does to prompts of the same relation about other
    # subjects is not guarded (Iraq → Milan can spill onto France: `corsa edit` shows such spill-over)
    edit_with_defaults("corsa", edits, tmp_path / "run")


def test_corsa_lifelong_switches_them_and_leaves_an_unrelated_fact_exactly(edits, tmp_path):
    before, after = edit_with_defaults("corsa-lifelong", edits, tmp_path / "run")
    # scoped to prompts that name an edited subject: France gets the unedited model's own answer
    assert after[-1] == before[-1], f"unrelated fact changed: {before[-1]!r} → {after[-1]!r}"


def test_memit_switches_them_with_its_defaults(edits, tmp_path):
    # a closed-form change of five layers' MLPs (corsa.editors), its key statistics computed from
    # the model's own text the first time and cached; no training
    edit_with_defaults("memit", edits, tmp_path / "run")
    import json

    config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert all(t.endswith("mlp.down_proj") for t in config["target_modules"]) and len(config["target_modules"]) == 5
