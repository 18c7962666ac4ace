"""The preservation term (corsa.preserve): zero on a fresh adapter, a hand-computed KL, and anchors
that are never evaluation probes (bundled, swapped-subject, and the spill-over check's prompts).
"""

import math

import pytest
import torch

from corsa import ConfigError, Editor
from corsa import preserve
from corsa.records import Edit, Probe

from conftest import SHARED_DATA


def test_preservation_is_zero_on_a_fresh_adapter_and_pulls_after_a_step(tiny):
    editor = Editor(tiny, method="lora", preserve=1.0, progress=False)
    anchors = preserve.prepare(editor.model, editor.fmt, preserve.read_anchors()[:6])
    assert len(anchors) > 0
    b = preserve.batch(anchors, list(range(len(anchors))), editor.tokenizer.eos_token_id)
    base = preserve.base_logprobs(editor.model, b)
    with torch.no_grad():
        kl0 = preserve.kl(base, preserve.answer_logits(editor.model, b), b.label_mask)
    assert kl0.item() == pytest.approx(0.0, abs=1e-6)
    editor.update([Edit("e0", "The code of item 0 is", "QQ", "AB")])
    with torch.no_grad():
        kl1 = preserve.kl(base, preserve.answer_logits(editor.model, b), b.label_mask)
    assert kl1.item() > 1e-6
    assert "loss/preserve" in editor.updates[-1].result.last_step


def test_kl_is_hand_computed():
    base = torch.log(torch.tensor([[[0.5, 0.5], [1.0, 1e-30]]]))
    logits = torch.log(torch.tensor([[[0.25, 0.75], [0.5, 0.5]]]))
    mask = torch.tensor([[1.0, 0.0]])
    want = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert preserve.kl(base, logits, mask).item() == pytest.approx(want, rel=1e-5)


def test_the_first_answer_token_is_weighed_on_its_own_by_hand():
    # two anchors; row 0's answer has 1 token (left-padded to K = 2), row 1's has 2
    base = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]], [[0.5, 0.5], [0.2, 0.8]]]))
    logits = torch.log(torch.tensor([[[0.7, 0.3], [0.6, 0.4]], [[0.1, 0.9], [0.5, 0.5]]]))
    mask = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    k = lambda p, q: sum(a * math.log(a / b) for a, b in zip(p, q))  # noqa: E731
    kl_01 = k([0.9, 0.1], [0.6, 0.4])                                 # row 0, position 0 is a pad
    kl_10, kl_11 = k([0.5, 0.5], [0.1, 0.9]), k([0.2, 0.8], [0.5, 0.5])
    mean = (kl_01 + kl_10 + kl_11) / 3
    assert preserve.kl(base, logits, mask).item() == pytest.approx(mean, rel=1e-5)
    # row 0's first answer token is its position 1 (the pad at 0 is not one), row 1's is position 0
    want = mean + 2.0 * (kl_01 + kl_10) / 2
    assert preserve.kl(base, logits, mask, first=2.0).item() == pytest.approx(want, rel=1e-5)
    # two workers' shards with the whole batch's counts add up to the batch's term
    shards = sum(preserve.kl(base[i:i + 1], logits[i:i + 1], mask[i:i + 1], tokens=3, first=2.0, rows=2)
                 for i in range(2))
    assert shards.item() == pytest.approx(want, rel=1e-5)
    assert preserve.first_token_kl(torch.ones(1, 2), torch.zeros(1, 2)).item() == 0.0   # no answer, no term


def test_an_update_with_the_first_token_term_trains_on_it(tiny):
    from corsa.config import EditConfig

    editor = Editor(tiny, method="lora", preserve=1.0, preserve_first=4.0, progress=False)
    editor.update([Edit("e0", "The code of item 0 is", "QQ", "AB")])
    assert editor.updates[-1].result.last_step["loss/preserve"] > 0
    with pytest.raises(ConfigError, match="--preserve-first"):
        EditConfig(method="lora", preserve_first=1.0)


def test_anchor_prompts_are_never_evaluation_probes():
    from corsa.cli import SAMPLE
    from corsa.loaders import load_edits

    anchors = preserve.read_anchors()
    assert len(anchors) >= 50
    files = [SAMPLE, SHARED_DATA / "counterfact" / "easyedit" / "counterfact-edit.json",
             SHARED_DATA / "counterfact" / "easyedit" / "counterfact-train.json",
             SHARED_DATA / "zsre" / "zsre_mend_train-1k.json", SHARED_DATA / "mquake" / "MQuAKE-hard.json"]
    for f in files:
        edits = load_edits(f, on_invalid="skip")
        assert preserve.without_probes(anchors, edits) == anchors, f
    # and at run time an anchor equal to a probe of the edits is dropped
    e = Edit("x", "p", "q", "r", locality=(Probe(anchors[0].upper() + "  "),))
    assert anchors[0] not in preserve.without_probes(anchors, [e])


def test_swapped_anchors_put_another_edits_subject_into_the_prompt():
    a = Edit("a", "Gustav Lindau took up work in", "Milan", "Berlin", subject="Gustav Lindau")
    b = Edit("b", "Anna Berg was born in", "Rome", "Oslo", subject="Anna Berg")
    c = Edit("c", "Where is it?", "Here", "There")  # no subject: no swapped anchor
    got = preserve.swapped_prompts([a, b, c], [a, b, c], k=2, seed=0)
    assert got == ["Anna Berg took up work in", "Gustav Lindau was born in"]
    assert preserve.swapped_prompts([a], [a], k=2, seed=0) == []  # no other subject to take


def test_preservation_anchors_include_swapped_prompts_and_no_probe(tiny):
    templates = ["{} works in", "{} was born in", "{} speaks"]
    edits = [Edit(f"e{i}", t.format(f"Person {i}"), f"City{i}", f"Town{i}", subject=f"Person {i}",
                  locality=(Probe("Person 1 works in"),) if i == 0 else ()) for i, t in enumerate(templates)]
    editor = Editor(tiny, method="lora", preserve=1.0, swap_anchors=2, template="raw", progress=False)
    anchors = editor.lifelong.anchors(editor.history, edits)
    swapped = {p for p in anchors.prompts if p.startswith("Person")}
    every = {t.format(f"Person {j}") for t in templates for j in range(3)}
    # each edit's prompt with the two other subjects, less the edit prompts and the locality probe
    assert swapped == every - {e.prompt for e in edits} - {"Person 1 works in"}
    assert len(anchors) == len(anchors.pairs) > len(swapped)  # the generic anchors are there too


def test_spillover_prompts_are_neither_anchors_nor_evaluation_probes():
    from corsa.cli import SAMPLE
    from corsa.cli.edit import spillover_prompts
    from corsa.loaders import load_edits

    prompts = spillover_prompts()
    assert len(prompts) >= 6
    assert not set(map(str.lower, prompts)) & set(map(str.lower, preserve.read_anchors()))
    files = [SAMPLE, SHARED_DATA / "counterfact" / "easyedit" / "counterfact-edit.json",
             SHARED_DATA / "zsre" / "zsre_mend_train-1k.json", SHARED_DATA / "mquake" / "MQuAKE-hard.json"]
    for f in files:
        if f.exists():
            assert preserve.without_probes(prompts, load_edits(f, on_invalid="skip")) == prompts, f
