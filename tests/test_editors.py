"""ROME, MEMIT and AlphaEdit (corsa.editors): the closed-form updates against direct solves and
the properties they are built for, the statistics cache, the adapter that carries them."""

from __future__ import annotations

import pytest
import torch

from corsa.editors import solve
from corsa.editors.layout import default_layers, find_layout, parse_layers, subject_position
from corsa.errors import ConfigError, DataError


def _spd(d: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    K0 = torch.randn(d, n, generator=g, dtype=torch.float64)
    return K0 @ K0.T / n


def test_rome_maps_the_key_to_the_value_and_moves_other_keys_little():
    g = torch.Generator().manual_seed(0)
    d_in, d_out = 12, 6
    W = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    C = _spd(d_in, 400, 1)
    k, v = torch.randn(d_in, generator=g, dtype=torch.float64), torch.randn(d_out, generator=g, dtype=torch.float64)
    delta = solve.rome_update(W, k, v, C)
    assert torch.linalg.matrix_rank(delta) == 1
    torch.testing.assert_close((W + delta) @ k, v)
    # among every change that maps k to v, ROME's moves the corpus keys least: tr(Δ C Δᵀ) is minimal.
    # Any other solution is Δ + N with N k = 0; adding such an N can only raise the cost.
    cost = lambda D: float(torch.trace(D @ C @ D.T))  # noqa: E731
    for seed in range(5):
        N = torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        N = N - torch.outer(N @ k, k) / (k @ k)  # N k = 0
        assert cost(delta) <= cost(delta + 0.1 * N) + 1e-9


def test_rome_on_a_hand_computed_case():
    # C = I, W = 0, k = e₁, v = (2, 3): ΔW = v e₁ᵀ
    delta = solve.rome_update(torch.zeros(2, 3), torch.tensor([1.0, 0, 0]), torch.tensor([2.0, 3.0]), torch.eye(3))
    torch.testing.assert_close(delta, torch.tensor([[2.0, 0, 0], [3.0, 0, 0]], dtype=torch.float64))


def test_memit_solves_its_least_squares_problem():
    g = torch.Generator().manual_seed(3)
    d_in, d_out, n, lam = 10, 5, 4, 7.0
    K = torch.randn(d_in, n, generator=g, dtype=torch.float64)
    R = torch.randn(d_out, n, generator=g, dtype=torch.float64)
    K0 = torch.randn(d_in, 50, generator=g, dtype=torch.float64)
    C = K0 @ K0.T / 50
    delta = solve.memit_update(R, K, C, lam)
    # min ‖Δ K − R‖² + λ tr(Δ C Δᵀ) as one stacked least-squares problem: Δ [K, √λ C^½] ≈ [R, 0]
    root = torch.linalg.cholesky(C)  # C = L Lᵀ, so tr(Δ C Δᵀ) = ‖Δ L‖²
    A = torch.cat([K, lam ** 0.5 * root], dim=1)
    B = torch.cat([R, torch.zeros(d_out, d_in, dtype=torch.float64)], dim=1)
    direct = torch.linalg.lstsq(A.T, B.T).solution.T
    torch.testing.assert_close(delta, direct)


def test_memit_with_no_weight_on_the_corpus_maps_the_keys_exactly():
    g = torch.Generator().manual_seed(4)
    K = torch.randn(8, 3, generator=g, dtype=torch.float64)
    R = torch.randn(4, 3, generator=g, dtype=torch.float64)
    delta = solve.memit_update(R, K, torch.eye(8, dtype=torch.float64), 1e-9)
    torch.testing.assert_close(delta @ K, R, atol=1e-6, rtol=1e-6)


def test_alphaedit_leaves_the_preserved_keys_unchanged():
    g = torch.Generator().manual_seed(5)
    d_in, d_out = 16, 6
    # preserved keys in a 10-dimensional subspace: C has 6 zero eigenvalues, the free directions
    basis = torch.linalg.qr(torch.randn(d_in, d_in, generator=g, dtype=torch.float64))[0]
    K0 = basis[:, :10] @ torch.randn(10, 200, generator=g, dtype=torch.float64)
    C = K0 @ K0.T / 200
    P = solve.null_space_projector(C, 1e-6)
    assert int(torch.linalg.matrix_rank(P)) == 6
    torch.testing.assert_close(P @ P, P)
    K = torch.randn(d_in, 3, generator=g, dtype=torch.float64)
    R = torch.randn(d_out, 3, generator=g, dtype=torch.float64)
    delta = solve.alphaedit_update(R, K, P, None, 1.0)
    assert float((delta @ K0).abs().max()) < 1e-8          # ΔW·K₀ = 0
    assert float((delta @ K - R).norm()) < float(R.norm())  # and the edits' keys move towards R


def test_alphaedit_keeps_earlier_edits_keys_better_than_without_them():
    g = torch.Generator().manual_seed(6)
    d_in, d_out = 12, 4
    P = torch.eye(d_in, dtype=torch.float64)
    K_prev = torch.randn(d_in, 5, generator=g, dtype=torch.float64)
    K = torch.randn(d_in, 2, generator=g, dtype=torch.float64)
    R = torch.randn(d_out, 2, generator=g, dtype=torch.float64)
    free = solve.alphaedit_update(R, K, P, None, 0.1)
    kept = solve.alphaedit_update(R, K, P, K_prev @ K_prev.T, 0.1)
    assert float((kept @ K_prev).norm()) < float((free @ K_prev).norm())


def test_alphaedit_equals_its_closed_form():
    # Δ = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + α I)⁻¹, written out with an explicit inverse
    g = torch.Generator().manual_seed(7)
    d_in, d_out = 7, 3
    K, R = torch.randn(d_in, 2, generator=g, dtype=torch.float64), torch.randn(d_out, 2, generator=g, dtype=torch.float64)
    Kp = torch.randn(d_in, 3, generator=g, dtype=torch.float64)
    P = solve.null_space_projector(_spd(d_in, 4, 8), 0.5)
    expected = R @ K.T @ P @ torch.linalg.inv(Kp @ Kp.T @ P + K @ K.T @ P + 2.0 * torch.eye(d_in, dtype=torch.float64))
    torch.testing.assert_close(solve.alphaedit_update(R, K, P, Kp @ Kp.T, 2.0), expected)


def test_low_rank_is_exact_up_to_the_rank_and_reports_the_error_past_it():
    g = torch.Generator().manual_seed(9)
    delta = torch.randn(6, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 9, generator=g, dtype=torch.float64)
    B, A, err = solve.low_rank(delta, 5)
    assert B.shape == (6, 5) and A.shape == (5, 9) and err < 1e-12
    torch.testing.assert_close(B @ A, delta)
    B, A, err = solve.low_rank(delta, 2)
    S = torch.linalg.svdvals(delta)
    assert err == pytest.approx(float(S[2] / S.norm()))


def test_default_layers_follow_the_depth():
    assert default_layers("rome", 28) == [5]
    assert default_layers("memit", 32) == [4, 5, 6, 7, 8]
    assert default_layers("memit", 30) == [4, 5, 6, 7, 8]
    assert default_layers("alphaedit", 2) == [0]
    assert parse_layers("3,5-6", "memit", 30) == [3, 5, 6]
    with pytest.raises(ConfigError, match="0 to 29"):
        parse_layers("30", "memit", 30)
    with pytest.raises(ConfigError, match="one layer"):
        parse_layers("4-5", "rome", 30)


def test_layout_and_subject_token_come_from_config_and_tokenizer():
    from corsa.prompts import PromptFormat
    from corsa.testing import tiny_llama

    model, tok = tiny_llama(layers=3, hidden=32, intermediate=48)
    layout = find_layout(model)
    assert (layout.layers, layout.projection, layout.n_layers, layout.d_in, layout.d_out) == \
        ("model.layers", "mlp.down_proj", 3, 48, 32)
    fmt = PromptFormat(tok)
    prompt = "The mother tongue of Danielle Darrieux is"
    ids = fmt.prompt_ids(prompt)
    i = subject_position(fmt, prompt, "Danielle Darrieux")
    # the tiny tokenizer has one token per byte: the subject's last byte is 'x'
    assert tok.decode(ids[i]) == "x" and tok.decode(ids[i + 1]) == " "
    with pytest.raises(DataError, match="not in the prompt"):
        subject_position(fmt, prompt, "Paris")
    # only the prompt's own text is searched, never the template's role headers
    with pytest.raises(DataError, match="not in the prompt"):
        subject_position(fmt, prompt, "assistant")
    assert subject_position(fmt, prompt, "danielle DARRIEUX") == i  # case does not matter


def test_an_edits_target_does_not_depend_on_the_edits_beside_it():
    from corsa.editors import targets
    from corsa.prompts import PromptFormat

    model, tok = _tiny()
    fmt = PromptFormat(tok, "raw")
    layout = find_layout(model)
    edits = _edits()
    settings = {"steps": 6, "lr": 1.0, "clamp": 1.5, "kl_weight": 0.0625, "eos": False}
    rows = [targets.subject_rows(fmt, e) for e in edits]
    module = layout.layer(model, 1)
    alone, _, _ = targets.optimise(model, fmt, module, edits[:1], rows[:1], settings)
    together, _, _ = targets.optimise(model, fmt, module, edits, rows, settings)
    torch.testing.assert_close(together[0], alone[0], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(together[1], together[0])


# --- the statistics cache and the editors on the tiny model ----------------------------------------

def _tiny(seed: int = 0):
    """The tiny Llama with its (tied) embeddings 20× their init: at the init's scale (std 0.02)
    the logits are all near 0, every answer equally likely whatever the hidden states."""
    from corsa.testing import tiny_llama

    model, tok = tiny_llama(seed=seed, layers=4, hidden=32, intermediate=48)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(20)
    return model, tok


def _tiny_editor(method, **kw):
    from corsa.api import Editor

    # raw prompts that end with the subject: in a random model little flows between positions, so
    # the subject's last token must be the one that predicts the answer for an edit to show
    return Editor(_tiny(), method=method, progress=False, stats_tokens=512, template="raw", **kw)


def score_answers(model, fmt, edits):
    """log p(y⁺ | x) of each edit (no end of turn: the locate-then-edit targets leave it out)."""
    from corsa.scoring import score_pairs

    return score_pairs(model, fmt, [(fmt.prompt_ids(e.prompt), fmt.answer_ids(e.target_new, False)) for e in edits])


def _edits():
    from corsa.records import Edit

    return [Edit(id=f"e{i}", prompt=f"The capital is that of Land{i}", target_new=w, target_old="Paris",
                 subject=f"Land{i}") for i, w in enumerate(["Oslo", "Rome", "Lima"])]


def test_statistics_are_computed_once_and_recomputed_for_another_corpus_or_model(tmp_path, monkeypatch):
    from corsa.editors import stats
    from corsa.editors.layout import find_layout

    monkeypatch.setenv("CORSA_CACHE", str(tmp_path))
    calls = []
    real = stats.corpus_ids
    monkeypatch.setattr(stats, "corpus_ids", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    ed = _tiny_editor("memit")
    layout = find_layout(ed.model)
    first = stats.second_moments(ed.model, ed.fmt, layout, [1], None, 512, ed.fingerprint, False)
    again = stats.second_moments(ed.model, ed.fmt, layout, [1], None, 512, ed.fingerprint, False)
    assert len(calls) == 1 and torch.equal(first[1].float(), again[1].float())
    C = first[1]
    assert C.shape == (48, 48) and torch.allclose(C, C.T) and float(torch.linalg.eigvalsh(C).min()) > -1e-6
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Some plain text about rivers.\nAnother line about mountains and lakes.\n")
    other = stats.second_moments(ed.model, ed.fmt, layout, [1], str(corpus), 512, ed.fingerprint, False)
    assert len(calls) == 2 and not torch.allclose(other[1], C)
    stats.second_moments(ed.model, ed.fmt, layout, [1], None, 512, "another-model", False)
    assert len(calls) == 3
    # a bad corpus file is named in the error
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": 1}\n')
    with pytest.raises(DataError, match="bad.jsonl"):
        stats.second_moments(ed.model, ed.fmt, layout, [1], str(bad), 512, ed.fingerprint, False)


@pytest.mark.parametrize("method", ["rome", "memit", "alphaedit"])
def test_an_update_moves_the_edited_vectors_to_their_targets_and_saves_a_plain_peft_adapter(tmp_path, monkeypatch,
                                                                                         method):
    from peft import PeftModel

    monkeypatch.setenv("CORSA_CACHE", str(tmp_path / "cache"))
    # the tiny model's few corpus keys would otherwise hold every direction: MEMIT's λ at 1, and
    # AlphaEdit free to use the directions below half the largest second moment
    ed = _tiny_editor(method, **{"memit": {"mom2_weight": 1.0}, "alphaedit": {"nullspace_threshold": 0.5}}.get(method, {}))
    edits = _edits()
    with ed.model.disable_adapter():
        before = score_answers(ed.model, ed.fmt, edits)
    unchanged = ed.ask(["Water boils at"], base=True)
    record = ed.update(edits, out=tmp_path / "run")
    last = record.result.history[-1]
    # the edited vectors (the projection's output for ROME, layer L's for MEMIT and AlphaEdit) at
    # the subject's last token went most of the way to the targets found for them
    assert last["locate/target_reached"] > 0.5, last
    assert last["locate/rank_error"] < 1e-6 and record.result.steps == 1
    after = score_answers(ed.model, ed.fmt, edits)
    assert not torch.equal(after, before)
    # only the projections of the method's layers carry the change
    names = [n for n, p in ed.model.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert names and all("mlp.down_proj" in n for n in names)
    assert ed.ask(["Water boils at"], base=True) == unchanged  # the adapter off is the unedited model
    # a plain PEFT load of the saved adapter gives the same scores
    base, _ = _tiny()
    plain = PeftModel.from_pretrained(base, str(tmp_path / "run" / "adapter"))
    torch.testing.assert_close(score_answers(plain, ed.fmt, edits), after, atol=1e-4, rtol=1e-4)


def test_alphaedit_keeps_its_keys_with_the_adapter_and_a_continuation_reads_them(tmp_path, monkeypatch):
    from corsa.api import Editor
    from corsa.editors.apply import KEYS_FILE, read_keys
    from corsa.records import Edit

    monkeypatch.setenv("CORSA_CACHE", str(tmp_path / "cache"))
    ed = _tiny_editor("alphaedit")
    ed.update(_edits(), out=tmp_path / "first")
    keys = read_keys(tmp_path / "first" / "adapter")
    assert (tmp_path / "first" / "adapter" / KEYS_FILE).exists()
    assert set(keys) == {0, 1} and keys[0].shape == (48, 3)  # default_layers("alphaedit", 4)
    more = [Edit(id="m0", prompt="The capital is that of Land9", target_new="Kyiv", target_old="Paris", subject="Land9")]
    cont = Editor(_tiny(), adapter=tmp_path / "first", method="alphaedit",
                  progress=False, stats_tokens=512, template="raw")
    cont.update(more, out=tmp_path / "second")
    assert read_keys(tmp_path / "second" / "adapter")[0].shape == (48, 4)
    with pytest.raises(ConfigError, match="keeps its layers"):
        Editor(_tiny(), adapter=tmp_path / "first", method="alphaedit",
               progress=False, stats_tokens=512, template="raw", layers="1").update(more)


# --- the command line: edit, continue, bench ---------------------------------------------------------

@pytest.fixture
def files(tmp_path, monkeypatch):
    import json

    from corsa.testing import save_tiny_llama

    monkeypatch.setenv("CORSA_CACHE", str(tmp_path / "cache"))
    model = save_tiny_llama(tmp_path / "tiny", seed=0)

    def write(name, start, n):
        path = tmp_path / name
        path.write_text("".join(json.dumps({
            "id": f"e{i}", "prompt": f"The capital is that of Land{i}", "target_new": f"City{i}", "target_old": "Paris",
            "subject": f"Land{i}", "paraphrases": [f"Land{i} has its capital in"],
            "locality": [{"prompt": f"The colour of object {i} is", "answer": "red"}]}) + "\n" for i in range(start, start + n)))
        return path

    return tmp_path, model, write("first.jsonl", 0, 4), write("more.jsonl", 4, 2)


def test_edit_then_continue_from_the_command_line(files):
    import json

    from corsa.cli import main
    from corsa.editors.apply import read_keys

    root, model, first, more = files
    fast = ["--stats-tokens", "512", "--nullspace-threshold", "0.5", "--target-steps", "3", "--template", "raw", "--quiet"]
    assert main(["edit", "--model", str(model), "--edits", str(first), "--method", "alphaedit", "--out",
                 str(root / "u1"), *fast]) == 0
    # the method and layers come from the adapter; the keys of the first update are kept
    assert main(["edit", "--model", str(model), "--edits", str(more), "--adapter", str(root / "u1"), "--out",
                 str(root / "u2"), *fast]) == 0
    run = json.loads((root / "u2" / "run.json").read_text())
    assert [u["index"] for u in run["updates"]] == [1, 2] and run["config"]["method"] == "alphaedit"
    assert {k: v.shape[1] for k, v in read_keys(root / "u2" / "adapter").items()} == {0: 6}
    # an option of training is refused on this row, naming the fix
    assert main(["edit", "--model", str(model), "--edits", str(more), "--method", "memit", "--replay", "all",
                 "--out", str(root / "bad"), "--quiet"]) == 2
    # and an adapter of the other kind cannot be continued
    assert main(["edit", "--model", str(model), "--edits", str(first), "--method", "lora", "--epochs", "1",
                 "--out", str(root / "trained"), "--quiet", "--no-check"]) == 0
    with pytest.raises(ConfigError, match="cannot continue it"):
        from corsa.api import Editor

        Editor(str(model), adapter=root / "trained", method="memit", progress=False)


def test_bench_runs_the_editors_beside_a_trained_method(files):
    import json

    from corsa.cli import main

    root, model, first, _ = files
    out = root / "bench"
    assert main(["bench", "--model", str(model), "--data", str(first), "--methods", "lora,memit,rome", "--edits", "4",
                 "--updates", "2", "--seed", "0", "--out", str(out), "--epochs", "2", "--stats-tokens", "512",
                 "--target-steps", "3", "--max-new-tokens", "6", "--template", "raw", "--quiet"]) == 0
    r = json.loads((out / "results.json").read_text())
    assert list(r["methods"]) == ["lora", "memit", "rome"]
    for name in ("memit", "rome"):
        m = r["methods"][name]
        assert len(m["per_update"]) == 2 and m["config"]["method"] == name
        assert (out / f"retention-{name}.png").exists()
    assert "rome" in (out / "report.md").read_text()


def test_an_interrupted_statistics_run_resumes_from_its_saved_chunks(tmp_path, monkeypatch):
    from corsa.editors import stats
    from corsa.editors.layout import find_layout

    monkeypatch.setenv("CORSA_CACHE", str(tmp_path))
    ed = _tiny_editor("memit")
    layout = find_layout(ed.model)
    real, made = stats._own_text_chunk, []

    def counted(*a, **k):
        made.append(a[2])
        if len(made) == 2 and not hasattr(counted, "failed"):
            counted.failed = True
            raise KeyboardInterrupt  # stopped while generating the second chunk
        return real(*a, **k)

    monkeypatch.setattr(stats, "_own_text_chunk", counted)
    with pytest.raises(KeyboardInterrupt):
        stats.second_moments(ed.model, ed.fmt, layout, [0], None, 2000, ed.fingerprint, False)
    made.clear()
    C = stats.second_moments(ed.model, ed.fmt, layout, [0], None, 2000, ed.fingerprint, False)[0]
    assert 0 not in made and made[0] == 1  # the first chunk was read back, generation went on from the second
    # the same statistics as a run never interrupted
    monkeypatch.setenv("CORSA_CACHE", str(tmp_path / "fresh"))
    torch.testing.assert_close(stats.second_moments(ed.model, ed.fmt, layout, [0], None, 2000, ed.fingerprint, False)[0], C)


def test_rome_on_the_tiny_model_maps_the_subject_key_to_its_value_and_moves_other_keys_little(tmp_path, monkeypatch):
    from corsa.editors import apply, stats, targets
    from corsa.editors.layout import find_layout

    monkeypatch.setenv("CORSA_CACHE", str(tmp_path))
    ed = _tiny_editor("rome")
    layout = find_layout(ed.model)
    (layer,) = apply.edited_layers(ed.model, layout)
    module = layout.module(ed.model, layer)
    edit = _edits()[0]
    rows = [targets.subject_rows(ed.fmt, edit)]
    K = targets.keys(ed.model, ed.fmt, module, rows).double()                     # (d_in, 1)
    C = stats.second_moments(ed.model, ed.fmt, layout, [layer], None, 2000, ed.fingerprint, False)[layer]
    W = layout.weight(ed.model, layer).detach().double()
    g = torch.Generator().manual_seed(1)
    delta = 0.5 * (W @ K).norm() * torch.nn.functional.normalize(torch.randn(1, W.shape[0], generator=g, dtype=torch.float64))
    apply._rome(ed.model, layout, layer, K, delta, C + 1e-3 * C.trace() / C.shape[0] * torch.eye(C.shape[0]))
    change = apply.current_delta(module)
    torch.testing.assert_close((W + change) @ K[:, 0], W @ K[:, 0] + delta[0])  # the solved value, exactly
    # the corpus keys (second moment C) move less than under the plain least-norm change that maps the
    # subject's key just as well, δ kᵀ/‖k‖²: E‖Δ k₀‖² = tr(Δ C Δᵀ)
    k = K[:, 0]
    naive = torch.outer(delta[0], k) / (k @ k)
    torch.testing.assert_close((W + naive) @ k, W @ k + delta[0])
    spread = lambda D: float(torch.trace(D @ C @ D.T))  # noqa: E731
    assert spread(change) < 0.7 * spread(naive)


@pytest.mark.parametrize("family", ["qwen2", "gemma3"])
def test_the_layout_of_other_decoders_comes_from_their_config(family):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, Qwen2Config, Qwen2ForCausalLM

    size = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2)
    model = (Qwen2ForCausalLM(Qwen2Config(**size)) if family == "qwen2"
             else Gemma3ForCausalLM(Gemma3TextConfig(**size, head_dim=8)))
    layout = find_layout(model)
    assert (layout.projection, layout.n_layers, layout.d_in, layout.d_out) == ("mlp.down_proj", 3, 48, 32)
    assert layout.weight(model, 2).shape == (32, 48)
