"""Other wordings of an edit's prompt (corsa.rephrase, EditConfig.rephrase): the template bank
built from records by hand-checked rules, the wordings it gives, that no wording is an evaluation
probe, the step's draw, and the SFT gradient the wordings add, against a direct computation.
"""

import dataclasses
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

from conftest import SHARED_DATA


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


def test_a_template_that_bridges_two_relations_links_neither():
    # "{} is in" is seen with continent wordings and with place wordings, which never meet otherwise
    pairs = [("{} is in", "{} belongs to the continent of"), ("{} is in", "{} is a part of the continent of"),
             ("{} belongs to the continent of", "{} is a part of the continent of"),
             ("{} is in", "{} is within"), ("{} is in", "{} can be found in"), ("{} is within", "{} can be found in")]
    records = [rec(a.format(f"S{k}"), f"S{k}", b.format(f"T{k}")) for k, (a, b) in enumerate(pairs * 2)]
    records += [rec(b.format(f"U{k}"), f"U{k}", a.format(f"V{k}")) for k, (a, b) in enumerate(pairs * 2)]
    assert build_bank(records) == [["{} belongs to the continent of", "{} is a part of the continent of"],
                                   ["{} can be found in", "{} is within"]]
    # one relation whose templates all meet through a hub keeps it: the hub's removal leaves single templates
    star = [("{} is in", "{} is within"), ("{} is in", "{} can be found in")]
    records = [rec(a.format(f"S{k}"), f"S{k}", b.format(f"T{k}")) for k, (a, b) in enumerate(star * 2)]
    records += [rec(b.format(f"U{k}"), f"U{k}", a.format(f"V{k}")) for k, (a, b) in enumerate(star * 2)]
    assert build_bank(records) == [["{} can be found in", "{} is in", "{} is within"]]


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
    ('{"relations": [["{} is in", "{} lies in"], ["{} is in", "{} sits in"]]}', "in two relations"),
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
    bad = tmp_path / "bad.json"
    bad.write_text('{"prompt": "not a list"}')
    with pytest.raises(SystemExit, match=f"file {bad}.*list of records"):
        main(["--from", str(bad), "--out", str(tmp_path / "other.json")])
    assert not (tmp_path / "other.json").exists()


def test_a_bank_of_ones_own_is_used_and_refused_without_rephrase(tiny, tmp_path):
    from corsa import ConfigError, EditConfig

    path = tmp_path / "bank.json"
    path.write_text(json.dumps({"relations": [["{} lives in", "{} resides in"]]}))
    editor = Editor(tiny, method="corsa-lifelong", rephrase_templates=str(path), progress=False)
    life = Lifelong(editor.model, editor.fmt, editor.config, None)
    enc = encode_edits(editor.fmt, [Edit("e0", "Ann Lee lives in", "Oslo", "Rome", subject="Ann Lee")], None, True)
    life.add_rephrasings(enc, [Edit("e0", "Ann Lee lives in", "Oslo", "Rome", subject="Ann Lee")], [])
    assert enc[0].rephrased == [editor.fmt.prompt_ids("Ann Lee resides in")]
    with pytest.raises(ConfigError, match="--rephrase-templates.*off"):
        EditConfig(method="corsa", rephrase_templates=str(path))


def test_no_wording_is_an_evaluation_probe(tiny):
    editor = Editor(tiny, method="corsa-lifelong", rephrase=1, progress=False)
    life = Lifelong(editor.model, editor.fmt, editor.config, None)
    bank_prompt = "The mother tongue of Ann Lee is"
    # another edit's paraphrase is one of the wordings, and the edit's own paraphrase is another one behind a
    # sentence of noise (as CounterFact's are): neither is trained
    other = Edit("e1", "Bo Chan is a citizen of", "Peru", "Chile", subject="Bo Chan",
                 paraphrases=("The native language of Ann Lee is",))
    edit = Edit("e0", bank_prompt, "French", "English", subject="Ann Lee",
                paraphrases=("It rained all day. Ann Lee is a native speaker of",))
    enc = encode_edits(editor.fmt, [edit], None, need_rejected=True)
    life.add_rephrasings(enc, [edit], [edit, other])
    wordings = Bank.read().wordings(bank_prompt, "Ann Lee")
    gone = {"The native language of Ann Lee is", "Ann Lee is a native speaker of"}
    kept = [w for w in wordings if w not in gone]
    assert len(kept) == len(wordings) - 2
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
    other = {0: [editor.fmt.prompt_ids("Country 0 has its capital in"), editor.fmt.prompt_ids("Country 0's capital is")],
             2: [editor.fmt.prompt_ids("Where is the capital of country 2?")]}
    plain = objective_gradients(editor.model, params, editor.config, enc, ref, group, pad)
    more = objective_gradients(editor.model, params, editor.config, enc, ref, group, pad, rephrased=other)
    # by hand: edit 0's mean over its two wordings and edit 2's one, each over the group's 3 edits
    def nll(prompt, i):
        b = collate([(prompt, enc[i].chosen)], pad)
        return sft_loss(score(editor.model, b), b.n_answer_tokens)

    loss = editor.config.sft_weight / 3 * ((nll(other[0][0], 0) + nll(other[0][1], 0)) / 2 + nll(other[2][0], 2))
    want = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
    assert torch.allclose(more.sft - plain.sft, want, atol=1e-6, rtol=1e-4)
    # the same however the group is split into micro-batches
    split = objective_gradients(editor.model, params, editor.config, enc, ref, [[0], [1, 2]], pad, rephrased=other)
    whole = objective_gradients(editor.model, params, editor.config, enc, ref, [[0, 1, 2]], pad, rephrased=other)
    assert torch.allclose(split.sft - plain.sft, want, atol=1e-6, rtol=1e-4)
    assert torch.allclose(whole.sft - plain.sft, want, atol=1e-6, rtol=1e-4)
    assert torch.equal(more.dpo, plain.dpo)  # the wordings are SFT's alone
    assert more.stats["loss/rephrase"] > 0 and "loss/rephrase" not in plain.stats


def test_rephrase_dpo_adds_the_dpo_gradient_of_each_wording_against_the_edits_negatives(tiny, toy_edits):
    import torch.nn.functional as F

    editor = Editor(tiny, method="corsa", rephrase=1, rephrase_dpo=True, progress=False)
    params = trainable_parameters(editor.model)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 0.05)
    enc = encode_edits(editor.fmt, toy_edits[:3], None, need_rejected=True)
    # edit 0: y⁻ and one negative longer than y⁺ (a wrong stride would count its tokens); the others y⁻
    enc[0].extra = [editor.fmt.answer_ids("the old harbour town of Lyon", True)]
    # three wordings for edit 0, none for edit 1: a micro-batch's rows are not its edits
    other = {0: [editor.fmt.prompt_ids("Country 0 has its capital in"), editor.fmt.prompt_ids("Country 0's capital is"),
                 editor.fmt.prompt_ids("The seat of government of country 0 is")],
             2: [editor.fmt.prompt_ids("Where is the capital of country 2?")]}
    for i, wordings in other.items():
        enc[i].rephrased = wordings
    ref = compute_reference(editor.model, editor.fmt, enc, editor.config, 8)  # scores the wordings' pairs too
    pad = editor.tokenizer.pad_token_id
    plain = objective_gradients(editor.model, params, editor.config, enc, ref, [[0, 1], [2]], pad)
    more = objective_gradients(editor.model, params, editor.config, enc, ref, [[0, 1], [2]], pad, rephrased=other)

    def logp(prompt, answer):
        b = collate([(prompt, answer)], pad)
        return score(editor.model, b)[0]

    def dpo(prompt, i):  # Σ over the edit's rejected answers of −log σ(β(Δ⁺ − Δ⁻)), the base as reference
        with torch.no_grad(), editor.model.disable_adapter():
            ref_chosen = logp(prompt, enc[i].chosen)
            ref_rejected = [logp(prompt, a) for a in [enc[i].rejected, *enc[i].extra]]
        up = logp(prompt, enc[i].chosen) - ref_chosen
        return -sum(F.logsigmoid(0.1 * (up - (logp(prompt, a) - r)))
                    for a, r in zip([enc[i].rejected, *enc[i].extra], ref_rejected))

    loss = (sum(dpo(w, 0) for w in other[0]) / 3 + dpo(other[2][0], 2)) / 3
    want = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])
    assert torch.allclose(more.dpo - plain.dpo, want, atol=1e-6, rtol=1e-4)
    whole = objective_gradients(editor.model, params, editor.config, enc, ref, [[0, 1, 2]], pad, rephrased=other)
    assert torch.allclose(whole.dpo - plain.dpo, want, atol=1e-6, rtol=1e-4)
    # the SFT side is the same as without DPO on the wordings
    sft_only = dataclasses.replace(editor.config, rephrase_dpo=False)
    assert torch.allclose(objective_gradients(editor.model, params, sft_only, enc, ref, [[0, 1], [2]], pad,
                                              rephrased=other).sft, more.sft, atol=1e-6, rtol=1e-4)
    assert more.stats["loss/rephrase_dpo"] > 0
    # SAM's reuse pass: one backward of a·L_DPO + b·(λL_SFT + …), the wordings' terms on both sides
    mixed = objective_gradients(editor.model, params, editor.config, enc, ref, [[0, 1], [2]], pad,
                                 mix=(0.3, 0.7), rephrased=other)
    assert torch.allclose(mixed.sft, 0.3 * more.dpo + 0.7 * more.sft, atol=1e-6, rtol=1e-4)


def test_rephrase_dpo_is_refused_where_it_has_nothing_to_train(tiny):
    from corsa import ConfigError

    with pytest.raises(ConfigError, match="--rephrase is off"):
        Editor(tiny, method="corsa", rephrase_dpo=True, progress=False)
    with pytest.raises(ConfigError, match="reference base"):
        Editor(tiny, method="corsa", rephrase=1, rephrase_dpo=True, reference="previous", progress=False)
    with pytest.raises(ConfigError, match="does not train DPO"):
        Editor(tiny, method="lora", rephrase=1, rephrase_dpo=True, progress=False)


def test_corsa_lifelong_trains_the_wordings_of_a_known_relation(tiny):
    from corsa.testing import FAST

    editor = Editor(tiny, method="corsa-lifelong", **FAST)
    assert editor.config.value("rephrase") == 1
    record = editor.update([Edit("e0", "The mother tongue of Ann Lee is", "French", "English", subject="Ann Lee"),
                            Edit("e1", "The code of item 1 is", "QQ", "AB")])     # no template: no wording
    assert record.result.last_step["loss/rephrase"] > 0
    both = Editor(tiny, method="corsa-lifelong", **{**FAST, "rephrase_dpo": True})
    assert both.update([Edit("e0", "The mother tongue of Ann Lee is", "French", "English", subject="Ann Lee")]
                       ).result.last_step["loss/rephrase_dpo"] > 0
    off = Editor(tiny, method="corsa-lifelong", **{**FAST, "rephrase": 0})
    assert "loss/rephrase" not in off.update([Edit("e0", "The mother tongue of Ann Lee is", "French", "English",
                                                    subject="Ann Lee")]).result.last_step


def test_the_bundled_bank_is_the_commands_output_on_counterfacts_train_split(tmp_path):
    from importlib import resources

    out = tmp_path / "bank.json"
    main(["--from", str(SHARED_DATA / "counterfact" / "easyedit" / "counterfact-train.json"), "--out", str(out)])
    bundled = json.loads(resources.files("corsa").joinpath("data", "relation_templates.json").read_text())
    assert json.loads(out.read_text()) == bundled
    # the continent and the place are two relations ("{} is in" asks either)
    bank = Bank(bundled["relations"])
    assert "X is within" not in bank.wordings("X belongs to the continent of", "X")


def test_a_bad_bank_is_refused_before_the_model_loads(tmp_path):
    path = tmp_path / "bank.json"
    path.write_text('{"relations": [["no slot here"]]}')
    with pytest.raises(DataError, match="exactly one"):
        Editor("/nonexistent/model/folder", method="corsa-lifelong", rephrase_templates=str(path))
