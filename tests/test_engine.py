"""The training engine on the tiny Llama: every method learns, and the step is the algorithm."""

import json

import pytest
import torch

from corsa import ConfigError, EditConfig, Editor, METHODS, ModelError
from corsa.engine import micro_batches
from corsa.step import compute_reference, corsa_step, objective_gradients, trainable_parameters
from corsa.prompts import PromptFormat, collate, encode_edits
from corsa.scoring import score
from corsa.sam import sam_perturbation
from corsa.testing import FAST



def lora_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def base_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}


@pytest.mark.parametrize("method", [m for m, row in METHODS.items() if row.solver is None])  # the trained rows
def test_every_method_changes_every_lora_parameter_and_no_base_weight(method, tiny, toy_edits):
    editor = Editor(tiny, method=method, **{**FAST, "grad_accum": 2})  # accumulation too
    lora0, base0 = lora_state(editor.model), base_state(editor.model)
    assert lora0 and base0
    record = editor.update(toy_edits)
    assert record.result.steps == 2 * 2  # 3 micro-batches → 2 steps per epoch
    for name, value in lora_state(editor.model).items():
        assert not torch.equal(value, lora0[name]), f"{method}: {name} did not change"
    for name, value in base_state(editor.model).items():
        assert torch.equal(value, base0[name]), f"{method}: base weight {name} changed"
    log = record.result.last_step
    assert "loss/sft" in log and ("loss/dpo" in log) == METHODS[method].dpo
    assert ("sam/grad_norm" in log) == METHODS[method].sam
    assert ("grad/cos_sft_dpo" in log) == METHODS[method].dpo


def test_training_raises_the_margin(tiny, toy_edits):
    from corsa.scoring import margins

    editor = Editor(tiny, method="corsa", epochs=8, batch_size=6, grad_accum=1, lr=2e-2, edit_stop=False,
                    warmup_steps=5, progress=False)
    enc = encode_edits(editor.fmt, toy_edits, None, need_rejected=True)
    before = margins(editor.model, editor.fmt, enc).mean()
    editor.update(toy_edits)
    after = margins(editor.model, editor.fmt, enc).mean()
    assert after > before + 1.0


def setup_step(tiny, edits, **cfg):
    editor = Editor(tiny, progress=False, **cfg)
    params = trainable_parameters(editor.model)
    # move B off zero so every LoRA parameter has a gradient
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 0.05)
    enc = encode_edits(editor.fmt, edits, None, need_rejected=True)
    ref = compute_reference(editor.model, editor.fmt, enc, editor.config, 8)
    return editor, params, enc, ref


@pytest.mark.parametrize("method", ["lora", "corsa"])
def test_gradient_accumulation_equals_one_big_batch(method, tiny, toy_edits):
    editor, params, enc, ref = setup_step(tiny, toy_edits, method=method)
    pad = editor.tokenizer.pad_token_id
    whole = objective_gradients(editor.model, params, editor.config, enc, ref, [[0, 1, 2, 3, 4]], pad)
    parts = objective_gradients(editor.model, params, editor.config, enc, ref, [[0, 1], [2, 3], [4]], pad)
    assert torch.allclose(whole.sft, parts.sft, atol=1e-6, rtol=1e-4)
    if method == "corsa":
        assert torch.allclose(whole.dpo, parts.dpo, atol=1e-6, rtol=1e-4)
    # and the full SAM step (perturbation from the accumulated gradient) agrees too
    g = torch.Generator().manual_seed(0)
    corsa_step(editor.model, params, editor.config, enc, ref, [[0, 1, 2, 3, 4]], pad, g)
    big = torch.cat([p.grad.reshape(-1) for p in params])
    corsa_step(editor.model, params, editor.config, enc, ref, [[0, 1], [2, 3], [4]], pad, g)
    small = torch.cat([p.grad.reshape(-1) for p in params])
    assert torch.allclose(big, small, atol=1e-6, rtol=1e-4)


def test_sam_step_uses_gradient_at_perturbed_point_and_restores_exactly(tiny, toy_edits):
    editor, params, enc, ref = setup_step(tiny, toy_edits, method="corsa", rho=0.5)
    pad = editor.tokenizer.pad_token_id
    group = [[0, 1, 2]]
    before = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(0)
    corsa_step(editor.model, params, editor.config, enc, ref, group, pad, gen)
    step_grad = torch.cat([p.grad.reshape(-1) for p in params])
    assert all(torch.equal(p, b) for p, b in zip(params, before)), "φ not restored bit for bit"
    # recompute by hand: g at φ, ε = ρ g/‖g‖, g' = PCGrad at φ+ε
    from corsa.pcgrad import pcgrad
    grads = objective_gradients(editor.model, params, editor.config, enc, ref, group, pad)
    eps = sam_perturbation(pcgrad([grads.dpo, grads.sft]), 0.5)
    assert eps.norm().item() == pytest.approx(0.5, rel=1e-5)
    with torch.no_grad():
        off = 0
        for p in params:
            p.add_(eps[off:off + p.numel()].view_as(p))
            off += p.numel()
    at_eps = objective_gradients(editor.model, params, editor.config, enc, ref, group, pad)
    expected = pcgrad([at_eps.dpo, at_eps.sft])
    assert torch.allclose(step_grad, expected, atol=1e-6, rtol=1e-4)
    assert not torch.allclose(step_grad, pcgrad([grads.dpo, grads.sft]), atol=1e-6)


def test_reference_is_scored_once_per_edit_and_update(tiny, toy_edits, monkeypatch):
    import corsa.step as step

    scored = []  # the edits whose reference was scored, at each scoring (later calls find nothing to do)
    real = step.score_negatives
    monkeypatch.setattr(step, "score_negatives", lambda m, f, enc, ref, which, bs: scored.append(list(which))
                        or real(m, f, enc, ref, which, bs))
    editor = Editor(tiny, method="corsa", **FAST)
    editor.update(toy_edits)
    editor.update(toy_edits[:3])
    assert scored == [list(range(len(toy_edits))), [0, 1, 2]]


def test_a_resting_edit_gets_its_reference_only_once_it_trains(tiny, toy_edits):
    editor, params, enc, _ = setup_step(tiny, toy_edits, method="corsa")
    ref = compute_reference(editor.model, editor.fmt, enc, editor.config, 8, which=[0, 2])
    assert [not torch.isnan(x) for x in ref.chosen] == [i in (0, 2) for i in range(len(enc))]
    full = compute_reference(editor.model, editor.fmt, enc, editor.config, 8)
    compute_reference(editor.model, editor.fmt, enc, editor.config, 8, which=range(len(enc)), ref=ref)
    assert torch.allclose(ref.chosen, full.chosen, atol=1e-5) and torch.allclose(ref.rejected, full.rejected, atol=1e-5)
    # 'previous' scores every edit at once, before the adapter moves
    prev = compute_reference(editor.model, editor.fmt, enc, EditConfig(reference="previous"), 8, which=[0])
    assert not torch.isnan(prev.chosen).any()


def test_base_reference_ignores_the_adapter(tiny, toy_edits):
    editor, params, enc, _ = setup_step(tiny, toy_edits, method="corsa")
    ref = compute_reference(editor.model, editor.fmt, enc, editor.config, 8)
    # by hand: each prompt + y⁺ alone (no padding, no batching), adapter off, the answer tokens' log-probs summed
    direct = []
    with editor.model.disable_adapter(), torch.no_grad():
        for e in enc:
            logp = editor.model(input_ids=torch.tensor([e.prompt + e.chosen])).logits[0].log_softmax(-1)
            direct.append(sum(logp[len(e.prompt) - 1 + t, tok].item() for t, tok in enumerate(e.chosen)))
    assert torch.allclose(ref.chosen, torch.tensor(direct), atol=1e-4)
    prev = compute_reference(editor.model, editor.fmt, enc, EditConfig(reference="previous"), 8)
    assert not torch.allclose(prev.chosen, ref.chosen, atol=1e-4)


def test_left_padding_does_not_change_scores(tiny):
    model, tok = tiny
    fmt = PromptFormat(tok, "raw")
    a = (fmt.prompt_ids("a short one"), fmt.answer_ids("yes"))
    b = (fmt.prompt_ids("a much longer prompt that needs padding on the other row"), fmt.answer_ids("no it is not"))
    alone = score(model, collate([a], tok.pad_token_id))
    together = score(model, collate([a, b], tok.pad_token_id))
    assert torch.allclose(alone[0], together[0], atol=1e-4)


def test_chat_and_raw_templates(tiny):
    model, tok = tiny
    chat, raw = PromptFormat(tok, "auto"), PromptFormat(tok, "raw")
    assert chat.chat and not raw.chat
    assert chat.answer_ids("Paris")[-1] == tok.eos_token_id
    assert raw.answer_ids("Paris")[-1] != tok.eos_token_id
    assert "<|im_start|>" in tok.decode(chat.prompt_ids("Q"))
    from corsa.testing import tiny_llama
    _, plain = tiny_llama(chat_template=False)
    with pytest.raises(ConfigError, match="no chat template"):
        PromptFormat(plain, "chat")
    assert not PromptFormat(plain, "auto").chat


def test_micro_batches_cover_every_edit_once_grouped_by_length(tiny, toy_edits):
    _, tok = tiny
    enc = encode_edits(PromptFormat(tok), toy_edits, None, True)
    batches = micro_batches(enc, 4, torch.Generator().manual_seed(0))
    assert sorted(i for b in batches for i in b) == list(range(6))
    assert [len(b) for b in sorted(batches, key=len)] == [2, 4]


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="nope"), "lora, sam, dpo, corsa, corsa-no-sam, corsa-no-pcgrad"),
    (dict(method="lora", rho=0.05), "does not use SAM"),
    (dict(method="sam", beta=0.1), "does not train DPO"),
    (dict(method="dpo", combine="pcgrad-release"), "does not use PCGrad"),
    (dict(method="lora", negatives="online"), "does not train DPO"),
    (dict(negatives="offline"), "choose online, interference or rivals"),
    (dict(replay="some"), "none, all or lost"),
    (dict(negatives="online", reference="previous"), "reference base"),
    (dict(edit_stop=True, early_stop=True), "choose one"),
    (dict(preserve=-1.0), "preserve"),
    (dict(method="corsa", combine="mean"), "pcgrad-release"),
    (dict(rho=-1.0), "rho"),
    (dict(beta=0.0), "beta"),
    (dict(lr=0.0), "lr"),
    (dict(lora_r=0), "lora_r"),
    (dict(reference="other"), "reference"),
    (dict(method="memit", replay="all"), "does not use fine-tuning"),
    (dict(method="memit", margin_target=5.0), "does not use fine-tuning"),
    (dict(method="corsa", layers="4-8"), "does not use locate-then-edit"),
    (dict(method="rome", mom2_weight=1.0), "does not use MEMIT"),
    (dict(method="memit", nullspace_threshold=0.1), "does not use AlphaEdit"),
    (dict(method="alphaedit", nullspace_threshold=2.0), "nullspace_threshold"),
    (dict(method="memit", edit_rank=0), "edit_rank"),
    (dict(method="memit", lr=1e-4), "does not train, so --lr"),
    (dict(method="rome", epochs=3, lora_r=8), "--lora-r, --epochs|--epochs, --lora-r"),
])
def test_invalid_configurations_are_errors_that_say_the_fix(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        EditConfig(**kwargs)


def test_resolved_terms_per_method():
    locate = ("layers", "clamp_factor", "kl_weight", "target_steps", "target_lr", "stats_corpus", "stats_tokens",
              "edit_rank", "mom2_weight", "nullspace_threshold", "alphaedit_l2")
    plain = {"negatives": [], "replay": "none", "train_eos": True, "preserve": 0.0, "preserve_first": 0.0, "swap_anchors": 0, "edit_weight": "group", "scope": "all",
             "keep_subject": 0, "keep_earlier": 0, "anchor_batch": 8, "rephrase": 0, "rephrase_dpo": False,
             "margin_target": 1.0, "retest_every": 1, "solver": None, **dict.fromkeys(locate)}
    assert EditConfig(method="lora").resolved()["resolved"] == {"rho": 0.0, "beta": None, "combine": "none",
                                                                "dpo": False, "sam": False, "sharpness": "none",
                                                                "max_negatives": 0, **plain}
    r = EditConfig(method="corsa", combine="pcgrad-release").resolved()["resolved"]
    assert r == {"rho": 0.05, "beta": 0.1, "combine": "pcgrad-release", "dpo": True, "sam": True,
                 "sharpness": "exact", "max_negatives": 4, **plain}
    # a row's own defaults, and a user's value over them
    life = EditConfig(method="corsa-lifelong")
    assert life.value("replay") != "none" and EditConfig(method="corsa-lifelong", replay="none").value("replay") == "none"
    assert EditConfig(method="lora", replay="all").value("replay") == "all"  # every mechanism on any row
    assert EditConfig(method="corsa-no-pcgrad").combiner == "sum"
    # a locate-then-edit row: its own options resolved, the fine-tuning ones off
    m = EditConfig(method="memit").resolved()["resolved"]
    assert (m["solver"], m["layers"], m["mom2_weight"], m["nullspace_threshold"], m["replay"], m["rho"]) == \
        ("memit", "auto", 1500.0, None, "none", 0.0)
    assert EditConfig(method="rome").value("clamp_factor") == 4.0


def test_unknown_target_module_lists_the_real_ones(tiny):
    with pytest.raises(ConfigError, match="q_proj"):
        Editor(tiny, target_modules="attn_c", progress=False)


def test_missing_old_target_is_the_models_greedy_answer(tiny, toy_edits):
    from dataclasses import replace

    from corsa.metrics import normalise
    from corsa.old_answers import SHOTS, answer_scores, candidates, first_line, short_answer

    editor = Editor(tiny, method="dpo", **FAST)
    edits = [replace(e, target_old=None) for e in toy_edits[:2]] + toy_edits[2:3]
    filled = editor.fill_old_targets(edits)
    assert filled[2] is edits[2]  # a given y⁻ stays
    # the greedy answers decoded one token at a time by hand, without generate()'s batching and cache
    model, fmt = editor.model, editor.fmt

    def greedy(ids, form=fmt):
        answer = []
        with torch.no_grad():
            for _ in range(editor.config.max_new_tokens):
                nxt = int(model(input_ids=torch.tensor([ids + answer])).logits[0, -1].argmax())
                answer.append(nxt)
                if nxt == editor.tokenizer.eos_token_id:
                    break
        return form.decode_answer(answer)

    scored = 0
    for e, f in zip(edits[:2], filled[:2]):
        reply = greedy(fmt.prompt_ids(e.prompt))
        text = fmt.raw()  # continuations: the chat completion and plain text; plain text after worked examples
        completions = ([greedy(fmt.prompt_ids(e.prompt) + fmt.prefill_ids(e.prompt)),
                        greedy(editor.tokenizer(e.prompt).input_ids)] if fmt.chat else [])
        completions.append(greedy(text.few_shot_ids(list(SHOTS), e.prompt), text))
        found = candidates(e.prompt, reply, completions, e.target_new)
        if found:  # the candidate the unedited model scores highest (answer_scores: checked against plain
            # forwards in test_old_answers), never y⁺ (candidates leave it out)
            assert normalise(e.target_new) not in {normalise(c) for c in found}
            want = found[int(answer_scores(model, fmt, e.prompt, found, e.target_new).argmax())]
            scored += 1
        else:
            fallback = [short_answer(e.prompt, reply), first_line(reply)]
            want = next((c for c in fallback if c and normalise(c) != normalise(e.target_new)),
                        editor.tokenizer.eos_token)
        assert f.target_old == want
    assert scored  # the scoring, not only the fallback, was checked


def test_save_continue_and_refuse(tmp_path, toy_edits):
    from corsa.testing import save_tiny_llama

    base = save_tiny_llama(tmp_path / "base", seed=0)
    first = Editor(str(base), method="corsa", **FAST)
    first.update(toy_edits[:3], out=tmp_path / "run1")
    assert (tmp_path / "run1" / "adapter" / "adapter_model.safetensors").exists()
    run = json.loads((tmp_path / "run1" / "run.json").read_text())
    assert run["config"]["method"] == "corsa" and run["versions"]["torch"]
    assert run["updates"][0]["edit_ids"] == ["e0", "e1", "e2"]
    assert (tmp_path / "run1" / "log.jsonl").read_text().count("\n") == run["updates"][0]["steps"]
    saved = lora_state(first.model)

    second = Editor(str(base), adapter=tmp_path / "run1", method="corsa", **FAST)
    assert all(torch.equal(v, saved[k]) for k, v in lora_state(second.model).items())
    second.update(toy_edits[3:], out=tmp_path / "run2")
    assert any(not torch.equal(v, saved[k]) for k, v in lora_state(second.model).items())
    assert json.loads((tmp_path / "run2" / "run.json").read_text())["parent_adapter"].endswith("adapter")

    # a pickle adapter is refused, never unpickled
    bad = tmp_path / "pickled"
    bad.mkdir()
    (bad / "adapter_config.json").write_text((tmp_path / "run1" / "adapter" / "adapter_config.json").read_text())
    (bad / "adapter_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ModelError, match="pickle"):
        Editor(str(base), adapter=bad, progress=False)

    # an adapter made for another base model is refused
    other = save_tiny_llama(tmp_path / "other", seed=1)
    with pytest.raises(ModelError, match="different base model"):
        Editor(str(other), adapter=tmp_path / "run1", progress=False)


def test_early_stop_stops_before_the_last_epoch(tiny):
    from corsa.records import Edit

    # byte-level tiny tokenizer: a two-letter answer is two tokens the tiny model can learn quickly
    edits = [Edit(id=f"e{i}", prompt=f"The code of item {i} is", target_new="QQ", target_old="AB") for i in range(2)]
    # the chat template closes each answer with the end-of-turn token, so the greedy answer is "QQ" and
    # not a raw continuation ("QQQQ…") that never matches y⁺ as a whole word
    # a budget of 120 passes decays the rate slowly enough that the answer is learnt well before its end,
    # whatever the float rounding of the batch layout (the trajectory at this rate is sensitive to it)
    editor = Editor(tiny, method="corsa", epochs=120, batch_size=6, grad_accum=1, lr=3e-2, early_stop=True,
                    warmup_steps=5, margin_target=0.5, progress=False, max_new_tokens=8)
    record = editor.update(edits)
    assert record.result.stopped_early and record.result.epochs < 120
    checks = [h for h in record.result.history if "early_stop/min_margin" in h]
    assert checks[-1]["early_stop/done"] and checks[-1]["early_stop/min_margin"] > 0.5
    assert all(a.startswith("QQ") for a in editor.ask([e.prompt for e in edits]))


def test_lr_factor_by_hand():
    from corsa.engine import lr_factor

    # warm-up 2 of 6 steps: 1/2, 1, then 4/4, 3/4, 2/4, 1/4
    assert [lr_factor(k, 2, 6) for k in range(1, 7)] == [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    assert [lr_factor(k, 0, 4) for k in range(1, 5)] == [1.0, 0.75, 0.5, 0.25]
    assert [lr_factor(k, 5, 3) for k in range(1, 4)] == [1 / 3, 2 / 3, 1.0]  # warm-up longer than the update
    assert lr_factor(7, 2, 6) == 0.0 and lr_factor(4, 3, 3) == 0.0


def test_the_first_step_already_moves_the_adapter(tiny, toy_edits, tmp_path):
    """A one-step update with the default warm-up trains (a schedule starting at lr 0 trains nothing)."""
    editor = Editor(tiny, method="lora", epochs=1, batch_size=6, grad_accum=1, lr=1e-2, max_steps=1, progress=False)
    assert editor.config.warmup_steps >= 1
    record = editor.update(toy_edits, out=tmp_path / "run")
    assert record.result.steps == 1
    assert all(v.abs().sum() > 0 for k, v in lora_state(editor.model).items() if "lora_B" in k)
    assert json.loads((tmp_path / "run" / "log.jsonl").read_text())["lr"] == pytest.approx(1e-2)


def _sam_setup(tiny, toy_edits, **options):
    """A corsa editor (ρ 0.5) whose adapter is moved off zero, two micro-batches, their reference."""
    editor = Editor(tiny, method="corsa", rho=0.5, max_grad_norm=0, progress=False, **options)
    params = trainable_parameters(editor.model)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 0.05)
    cfg, pad, group = editor.config, editor.tokenizer.pad_token_id, [[0, 1, 2], [3, 4, 5]]
    enc = encode_edits(editor.fmt, toy_edits, None, need_rejected=True)
    ref = compute_reference(editor.model, editor.fmt, enc, cfg, 8)
    editor.model.train()
    return editor, params, cfg, pad, group, enc, ref


@pytest.mark.parametrize("combine", ["pcgrad", "pcgrad-release"])
def test_reuse_takes_the_probe_mix_of_both_gradients_at_the_perturbed_point(tiny, toy_edits, combine):
    from corsa.step import combine as merge
    from corsa.pcgrad import coefficients
    from corsa.sam import add_flat_, restore_, snapshot

    editor, params, cfg, pad, group, enc, ref = _sam_setup(tiny, toy_edits, combine=combine, sharpness="reuse")
    before = snapshot(params)
    # by hand: the probe pass's mix (a, b), then both gradients at φ + ρ·g/‖g‖, mixed the same way
    probe = objective_gradients(editor.model, params, cfg, enc, ref, group, pad)
    a, b = coefficients(probe.dpo, probe.sft, combine)
    g = merge(probe, cfg, torch.Generator().manual_seed(0))
    add_flat_(params, sam_perturbation(g, 0.5))
    there = objective_gradients(editor.model, params, cfg, enc, ref, group, pad)
    want = a * there.dpo + b * there.sft
    restore_(params, before)
    corsa_step(editor.model, params, cfg, enc, ref, group, pad, torch.Generator().manual_seed(0))
    got = torch.cat([p.grad.reshape(-1) for p in params])
    assert want.norm() > 0 and torch.allclose(got, want, atol=1e-6, rtol=1e-4), (got - want).abs().max()
    assert all(torch.equal(p, q) for p, q in zip(params, before))  # the adapter is restored exactly
    # one backward per micro-batch at φ+ε instead of two: 2·2 + 2 autograd calls against 2·2 + 2·2
    calls = []
    real = torch.autograd.grad
    torch.autograd.grad = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        corsa_step(editor.model, params, cfg, enc, ref, group, pad, torch.Generator().manual_seed(0))
        n_reuse = len(calls)
        calls.clear()
        exact_cfg = EditConfig.from_dict({**cfg.resolved(), "sharpness": "exact"})
        corsa_step(editor.model, params, exact_cfg, enc, ref, group, pad, torch.Generator().manual_seed(0))
    finally:
        torch.autograd.grad = real
    assert (n_reuse, len(calls)) == (6, 8)


def test_momentum_perturbs_along_the_last_direction_in_one_pass(tiny, toy_edits):
    from corsa.step import SamMemory
    from corsa.step import combine as merge
    from corsa.sam import add_flat_, restore_, snapshot

    editor, params, cfg, pad, group, enc, ref = _sam_setup(tiny, toy_edits, sharpness="momentum")
    before = snapshot(params)
    memory = SamMemory()
    # the first step has no direction: it is the exact step, and leaves its g' as the direction
    corsa_step(editor.model, params, cfg, enc, ref, group, pad, torch.Generator().manual_seed(0), None, memory)
    first = torch.cat([p.grad.reshape(-1) for p in params])
    exact_cfg = EditConfig.from_dict({**cfg.resolved(), "sharpness": "exact"})
    corsa_step(editor.model, params, exact_cfg, enc, ref, group, pad, torch.Generator().manual_seed(0))
    assert torch.equal(first, torch.cat([p.grad.reshape(-1) for p in params]))
    assert torch.equal(memory.direction, first)
    # a later step: by hand, ε = ρ·d/‖d‖ for a direction d, then PCGrad of both gradients there
    d = torch.randn_like(first)
    memory.direction = d.clone()
    add_flat_(params, sam_perturbation(d, 0.5))
    want = merge(objective_gradients(editor.model, params, cfg, enc, ref, group, pad), cfg,
                 torch.Generator().manual_seed(0))
    restore_(params, before)
    calls = []
    real = torch.autograd.grad
    torch.autograd.grad = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        corsa_step(editor.model, params, cfg, enc, ref, group, pad, torch.Generator().manual_seed(0), None, memory)
    finally:
        torch.autograd.grad = real
    got = torch.cat([p.grad.reshape(-1) for p in params])
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-4), (got - want).abs().max()
    assert all(torch.equal(p, q) for p, q in zip(params, before))  # the adapter is restored exactly
    assert len(calls) == 4  # one pass: two backwards per micro-batch, against 8 for the exact step
    assert torch.equal(memory.direction, got)  # the next step perturbs along this one


def test_sharpness_is_an_option_of_the_rows_with_sam():
    assert EditConfig(method="corsa").value("sharpness") == "exact"
    assert EditConfig(method="sam", sharpness="reuse").value("sharpness") == "reuse"
    assert EditConfig(method="lora").value("sharpness") == "none"
    with pytest.raises(ConfigError, match="--sharpness"):
        EditConfig(method="dpo", sharpness="reuse")
    with pytest.raises(ConfigError, match="invalid --sharpness"):
        EditConfig(method="corsa", sharpness="cheap")


def test_slot_weights_pull_a_short_steps_edits_as_a_full_step_would(tiny, toy_edits):
    """--edit-weight slot: each edit weighs 1/(batch × accumulation), so a step with 2 edits of 4 slots takes
    2/4 of the group mean's gradient (both objectives), and a full step is the group mean exactly."""
    editor, params, enc, ref = setup_step(tiny, toy_edits, method="corsa", batch_size=2, grad_accum=2)
    pad = editor.tokenizer.pad_token_id
    mean = objective_gradients(editor.model, params, editor.config, enc, ref, [[0, 1]], pad)
    full = objective_gradients(editor.model, params, editor.config, enc, ref, [[0, 1], [2, 3]], pad)
    editor.config.edit_weight = "slot"
    short = objective_gradients(editor.model, params, editor.config, enc, ref, [[0, 1]], pad)
    assert torch.allclose(short.sft, mean.sft / 2, atol=1e-7, rtol=1e-5)
    assert torch.allclose(short.dpo, mean.dpo / 2, atol=1e-7, rtol=1e-5)
    again = objective_gradients(editor.model, params, editor.config, enc, ref, [[0, 1], [2, 3]], pad)
    assert torch.allclose(again.sft, full.sft, atol=1e-7, rtol=1e-5) and torch.allclose(again.dpo, full.dpo,
                                                                                          atol=1e-7, rtol=1e-5)
    with pytest.raises(ConfigError, match="--edit-weight edit: choose group or slot"):
        EditConfig(method="corsa", edit_weight="edit")
