"""Other wordings of an edit's prompt (corsa.rephrase, EditConfig.rephrase): the template bank
built from records by hand-checked rules, the wordings it gives, that no wording is an evaluation
probe, the step's draw, and the SFT gradient the wordings add, against a direct computation.
"""

import json

import pytest
import torch

from corsa import DataError, Editor
from corsa.lifelong import Lifelong
from corsa.prompts import collate, encode_edits
from corsa.records import Edit
from corsa.rephrase import Bank, build_bank, main, template_of
from corsa.scoring import score
from corsa.step import compute_reference, draw_rephrasings, objective_gradients, trainable_parameters
from corsa.objectives import sft_loss


def rec(prompt, subject, neighbour):
    return {"prompt": prompt, "subject": subject, "locality_prompt": neighbour}


RECORDS = [
    # citizenship: "{} is a citizen of" seen with "{}, who holds a citizenship from" (twice each)
    rec("Ann Lee is a citizen of", "Ann Lee", "Bo Chan, who holds a citizenship from"),
    rec("Cy Dorn is a citizen of", "Cy Dorn", "Di Fox, who holds a citizenship from"),
    rec("Ed Gray, who holds a citizenship from", "Ed Gray", "Flo Hart is a citizen of"),
    rec("Gus Ives, who holds a citizenship from", "Gus Ives", "Hal Jones is a citizen of"),
    # location: "{} is located in" begins "{} is located in the continent", so it links nothing
    rec("Paris Mall is located in", "Paris Mall", "Oslo Pier is located in the continent"),
    rec("Rome Gate is located in", "Rome Gate", "Kiev Arch is located in the continent"),
    rec("Oslo Pier is located in the continent", "Oslo Pier", "Rome Gate is located in"),
    rec("Kiev Arch is located in the continent", "Kiev Arch", "Paris Mall is located in"),
    # a template seen once, and one of a single word besides the slot: both dropped
    rec("Zed, whose birthplace was", "Zed", "Yan is a citizen of"),
    rec("Ann Lee, from", "Ann Lee", "Bo Chan is a citizen of"),
    rec("Cy Dorn, from", "Cy Dorn", "Di Fox is a citizen of"),
]


def test_template_of_replaces_the_subject_once():
    assert template_of("The mother tongue of Ann Lee is", "Ann Lee") == "The mother tongue of {} is"
    assert template_of("Ann Lee met Ann Lee", "Ann Lee") is None  # twice: which one is the slot?
    assert template_of("Nobody is a citizen of", "Ann Lee") is None
    assert template_of("Ann Lee is a citizen of", None) is None


def test_bank_joins_templates_seen_together_and_drops_loose_ones():
    assert build_bank(RECORDS) == [["{} is a citizen of", "{}, who holds a citizenship from"]]


def test_wordings_are_the_relations_other_templates_with_the_subject():
    bank = Bank(build_bank(RECORDS))
    assert bank.wordings("Mia Ng is a citizen of", "Mia Ng") == ["Mia Ng, who holds a citizenship from"]
    assert bank.wordings("Mia Ng is located in", "Mia Ng") == []      # not a relation of the bank
    assert bank.wordings("Mia Ng is a citizen of", None) == []        # no subject, no slot


def test_the_bundled_bank_gives_counterfact_wordings():
    bank = Bank.read()
    got = bank.wordings("The mother tongue of Danielle Darrieux is", "Danielle Darrieux")
    assert "The native language of Danielle Darrieux is" in got
    assert all("Danielle Darrieux" in w for w in got) and len(got) == len(set(got)) >= 3
    assert "The mother tongue of Danielle Darrieux is" not in got


@pytest.mark.parametrize("text, message", [
    ("{not json", "not JSON"),
    ('{"relations": 3}', "a list 'relations'"),
    ('{"relations": [["{} is", "no slot"]]}', "exactly one '{}'"),
])
def test_a_bad_bank_file_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "bank.json"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as err:
        Bank.read(path)
    assert str(path) in str(err.value)


def test_the_command_writes_a_bank_and_never_overwrites(tmp_path, capsys):
    src, out = tmp_path / "train.json", tmp_path / "bank.json"
    src.write_text(json.dumps(RECORDS))
    assert main(["--from", str(src), "--out", str(out)]) == 0
    assert Bank.read(out).wordings("A B is a citizen of", "A B") == ["A B, who holds a citizenship from"]
    before = out.read_bytes()
    with pytest.raises(SystemExit, match="exists"):
        main(["--from", str(src), "--out", str(out)])
    assert out.read_bytes() == before


def test_no_wording_is_an_evaluation_probe(tiny):
    editor = Editor(tiny, method="corsa-lifelong", rephrase=1, progress=False)
    life = Lifelong(editor.model, editor.fmt, editor.config, None)
    bank_prompt = "The mother tongue of Ann Lee is"
    edit = Edit("e0", bank_prompt, "French", "English", subject="Ann Lee")
    # another edit's paraphrase is one of the wordings: it must not be trained
    other = Edit("e1", "Bo Chan is a citizen of", "Peru", "Chile", subject="Bo Chan",
                 paraphrases=("The native language of Ann Lee is",))
    enc = encode_edits(editor.fmt, [edit], None, need_rejected=True)
    life.add_rephrasings(enc, [edit], [edit, other])
    wordings = Bank.read().wordings(bank_prompt, "Ann Lee")
    kept = [w for w in wordings if w != "The native language of Ann Lee is"]
    assert len(kept) == len(wordings) - 1
    assert enc[0].rephrased == [editor.fmt.prompt_ids(w) for w in kept]


def test_the_draw_takes_k_per_edit_from_the_shared_generator(tiny):
    editor = Editor(tiny, method="lora", progress=False)
    enc = encode_edits(editor.fmt, [Edit(f"e{i}", f"Item {i} is", "A", "B") for i in range(3)], None, True)
    enc[0].rephrased = [[1], [2], [3]]
    enc[2].rephrased = [[4]]
    assert draw_rephrasings(enc, [[0, 1, 2]], 0, torch.Generator()) is None
    drawn = draw_rephrasings(enc, [[0, 1], [2]], 2, torch.Generator().manual_seed(5))
    assert set(drawn) == {0, 2} and drawn[2] == [[4]]
    assert len(drawn[0]) == 2 and len({tuple(x) for x in drawn[0]}) == 2
    assert drawn == draw_rephrasings(enc, [[0, 1], [2]], 2, torch.Generator().manual_seed(5))


def test_wordings_add_the_sft_gradient_of_y_plus_after_them(tiny, toy_edits):
    editor = Editor(tiny, method="corsa", progress=False)
    params = trainable_parameters(editor.model)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 0.05)
    enc = encode_edits(editor.fmt, toy_edits[:3], None, need_rejected=True)
    ref = compute_reference(editor.model, editor.fmt, enc, editor.config, 8)
    pad, group = editor.tokenizer.pad_token_id, [[0, 1], [2]]
    other = {0: [editor.fmt.prompt_ids("Country 0 has its capital in")],
             2: [editor.fmt.prompt_ids("Where is the capital of country 2?")]}
    plain = objective_gradients(editor.model, params, editor.config, enc, ref, group, pad)
    more = objective_gradients(editor.model, params, editor.config, enc, ref, group, pad, rephrased=other)
    # by hand: micro-batch [0, 1] weighs 2/3 and has one wording row, [2] weighs 1/3 and has one
    loss = 0.0
    for w, i in ((2 / 3, 0), (1 / 3, 2)):
        b = collate([(other[i][0], enc[i].chosen)], pad)
        loss = loss + w * editor.config.sft_weight * sft_loss(score(editor.model, b), b.n_answer_tokens)
    want = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
    assert torch.allclose(more.sft - plain.sft, want, atol=1e-6, rtol=1e-4)
    assert torch.equal(more.dpo, plain.dpo)  # the wordings are SFT's alone
    assert more.stats["loss/rephrase"] > 0 and "loss/rephrase" not in plain.stats


def test_corsa_lifelong_trains_the_wordings_of_a_known_relation(tiny):
    from corsa.testing import FAST

    editor = Editor(tiny, method="corsa-lifelong", **FAST)
    assert editor.config.value("rephrase") == 1
    record = editor.update([Edit("e0", "The mother tongue of Ann Lee is", "French", "English", subject="Ann Lee"),
                            Edit("e1", "The code of item 1 is", "QQ", "AB")])     # no template: no wording
    assert record.result.last_step["loss/rephrase"] > 0
    off = Editor(tiny, method="corsa-lifelong", **{**FAST, "rephrase": 0})
    assert "loss/rephrase" not in off.update([Edit("e0", "The mother tongue of Ann Lee is", "French", "English",
                                                    subject="Ann Lee")]).result.last_step
