"""Integration: CoRSA edits real facts of the real SmolLM2-135M-Instruct, offline, on CPU."""

import pytest
import torch

from corsa import Editor, load_edits
from corsa.cli import SAMPLE
from corsa.metrics import contains

pytestmark = pytest.mark.slow


def took(answer: str, target: str) -> bool:
    return contains(answer, target)


def test_corsa_switches_real_counterfact_answers_and_leaves_an_unrelated_fact(tmp_path):
    torch.set_num_threads(2)
    edits = [e for e in load_edits(SAMPLE) if e.id in ("cf-7005", "cf-231", "cf-16575", "cf-4664")]
    assert len(edits) == 4
    editor = Editor("smollm2-135m", method="corsa", progress=False)  # the defaults, as a new user runs it
    unrelated = "What is the capital of France?"
    before = editor.ask([e.prompt for e in edits] + [unrelated], base=True)
    assert not any(took(a, e.target_new) for a, e in zip(before, edits)), before
    assert "paris" in before[-1].lower()

    editor.update(edits, out=tmp_path / "run")
    after = editor.ask([e.prompt for e in edits] + [unrelated])
    switched = [e.id for a, e in zip(after, edits) if took(a, e.target_new)]
    assert len(switched) >= 3, list(zip(after, edits))
    # the fact stays (the answer's wording may become terser, as the edits' answers are short)
    assert "paris" in after[-1].lower(), f"unrelated fact changed: {before[-1]!r} → {after[-1]!r}"
    assert not any(took(after[-1], e.target_new) for e in edits)
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()
