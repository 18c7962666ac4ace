"""The vLLM generation path (`corsa eval --generator vllm`), checked against a stand-in vLLM.

vLLM needs CUDA, so CPU tests cannot run it. The stand-in implements the slice of vLLM's API
that corsa.vllm_backend calls (LLM, SamplingParams, LoRARequest; requests as prompt token ids;
outputs in request order holding token ids) with transformers and peft underneath, loading the
adapter from the path in the LoRARequest. What is checked is our side: the prompts we send, the
adapter we name, the rank we ask for, and how answers are cut and shaped; equal answers to the
transformers path show the two agree.
"""

import copy
import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from corsa import ConfigError, Editor
from corsa.cli import main
from corsa.evaluate import EvalSettings, evaluate
from corsa.testing import save_tiny_llama


# keyword names of vLLM's real LLM(...) and SamplingParams(...) (a subset): a misspelt or removed
# argument in our calls fails here as it would there
LLM_ARGS = {"model", "tokenizer", "seed", "enable_lora", "max_lora_rank", "max_loras", "gpu_memory_utilization",
            "dtype", "max_model_len", "tensor_parallel_size", "trust_remote_code"}
SAMPLING_ARGS = {"n", "max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids",
                 "ignore_eos", "detokenize", "skip_special_tokens", "logprobs", "repetition_penalty"}


def sampling_params(**kw):
    unknown = set(kw) - SAMPLING_ARGS
    assert not unknown, f"not a vLLM SamplingParams field: {unknown}"
    return SimpleNamespace(**kw)


class FakeLLM:
    made: list = []
    fail_with: Exception | None = None

    def __init__(self, model, tokenizer=None, enable_lora=False, max_lora_rank=16, max_loras=1, seed=0, **kw):
        from transformers import AutoModelForCausalLM

        unknown = set(kw) - LLM_ARGS
        assert not unknown, f"not a vLLM LLM argument: {unknown}"
        if FakeLLM.fail_with is not None:
            raise FakeLLM.fail_with

        self.options = dict(model=model, tokenizer=tokenizer, enable_lora=enable_lora, max_lora_rank=max_lora_rank,
                            max_loras=max_loras, **kw)
        self.base = AutoModelForCausalLM.from_pretrained(model).eval()
        self.peft = {}
        self.calls = []
        FakeLLM.made.append(self)

    def _model(self, lora):
        if lora is None:
            return self.base
        from peft import PeftModel

        assert self.options["enable_lora"], "a LoRA request to an engine built without enable_lora"
        rank = json.loads(Path(lora.lora_path, "adapter_config.json").read_text())["r"]
        assert rank <= self.options["max_lora_rank"], "vLLM refuses an adapter above max_lora_rank"
        if lora.lora_path not in self.peft:
            self.peft[lora.lora_path] = PeftModel.from_pretrained(copy.deepcopy(self.base), lora.lora_path).eval()
        return self.peft[lora.lora_path]

    @torch.no_grad()
    def generate(self, requests, params, lora_request=None, use_tqdm=True):
        self.calls.append((len(requests), params, lora_request))
        model = self._model(lora_request)
        outs = []
        for req in requests:
            ids = torch.tensor([req["prompt_token_ids"]])
            sample = params.temperature > 0
            if sample:
                torch.manual_seed(params.seed)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=params.max_tokens,
                                 do_sample=sample, num_return_sequences=params.n, pad_token_id=0,
                                 eos_token_id=params.stop_token_ids[0],
                                 **(dict(temperature=params.temperature, top_k=0) if sample else {}))
            outs.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=tuple(row[ids.shape[1]:].tolist()))
                                                 for row in out]))
        return outs


@pytest.fixture
def fake_vllm(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.LLM = FakeLLM
    vllm.SamplingParams = sampling_params
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = lambda name, int_id, path: SimpleNamespace(lora_name=name, lora_int_id=int_id, lora_path=path)
    for name, mod in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, mod)
    FakeLLM.made, FakeLLM.fail_with = [], None
    yield FakeLLM
    FakeLLM.fail_with = None


@pytest.fixture
def trained(tmp_path, toy_edits):
    model_dir = tmp_path / "tiny"
    save_tiny_llama(model_dir, seed=0)
    editor = Editor(str(model_dir), epochs=3, batch_size=2, grad_accum=1, lr=2e-2, lora_r=12, progress=False)
    editor.update(toy_edits[:3])
    editor.save(tmp_path / "run")
    return model_dir, tmp_path / "run", Editor(str(model_dir), adapter=tmp_path / "run", progress=False)


def test_vllm_answers_equal_the_transformers_answers(fake_vllm, trained, toy_edits):
    from corsa.vllm_backend import VLLMGenerator

    model_dir, run, editor = trained
    gen = VLLMGenerator(model_dir, editor.fmt, run / "adapter")
    llm = fake_vllm.made[-1]
    assert llm.options["enable_lora"] and llm.options["max_lora_rank"] == 16  # rank 12 → vLLM's next size
    settings = EvalSettings(max_new_tokens=6)
    for base in (True, False):
        ours = evaluate(editor, toy_edits[:3], base=base, settings=settings)
        theirs = evaluate(editor, toy_edits[:3], base=base, settings=settings, generator=gen)
        assert theirs["records"] == ours["records"]
        assert theirs["protocol"]["generated"]["engine"] == "vllm"
        assert ours["protocol"]["generated"]["engine"] == "transformers"
    named = [lora for _, _, lora in llm.calls]
    assert any(r is None for r in named), "the unedited answers must come without the adapter"
    assert any(r is not None and r.lora_path == str(run / "adapter") for r in named)
    assert all(params.temperature == 0.0 for _, params, _ in llm.calls)


def test_vllm_samples_have_the_transformers_shape(fake_vllm, trained, toy_edits):
    from corsa.vllm_backend import VLLMGenerator

    model_dir, run, editor = trained
    gen = VLLMGenerator(model_dir, editor.fmt, run / "adapter")
    settings = EvalSettings(max_new_tokens=4, sample=3, temperature=1.0, seed=5)
    res = evaluate(editor, toy_edits[:2], settings=settings, generator=gen)
    rec = res["records"][0]
    assert isinstance(rec["answer"], list) and len(rec["answer"]) == 3
    assert isinstance(rec["locality"][0]["answer"], str)  # locality stays greedy
    sampled = [params for _, params, _ in fake_vllm.made[-1].calls if params.temperature > 0]
    assert sampled and all(p.n == 3 and p.seed == 5 and p.temperature == 1.0 for p in sampled)


def test_corsa_eval_with_vllm_writes_the_same_numbers(fake_vllm, trained, toy_edits, tmp_path):
    from corsa.loaders import save_edits_jsonl

    model_dir, run, _ = trained
    save_edits_jsonl(toy_edits[:3], tmp_path / "edits.jsonl")
    outs = {}
    for generator in ("hf", "vllm"):
        outs[generator] = tmp_path / f"{generator}.json"
        assert main(["eval", "--model", str(model_dir), "--adapter", str(run), "--edits", str(tmp_path / "edits.jsonl"),
                     "--out", str(outs[generator]), "--max-new-tokens", "5", "--quiet", "--generator", generator]) == 0
    hf, vl = (json.loads(outs[g].read_text()) for g in ("hf", "vllm"))
    assert vl["metrics"] == hf["metrics"]
    assert fake_vllm.made and fake_vllm.made[-1].options["model"] == str(model_dir)


def test_without_vllm_installed_the_error_says_how(monkeypatch, tmp_path):
    from corsa.testing import tiny_tokenizer
    from corsa.prompts import PromptFormat
    from corsa.vllm_backend import VLLMGenerator

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'corsa-edit\[vllm\]'"):
        VLLMGenerator(tmp_path, PromptFormat(tiny_tokenizer(), "raw"))


def test_an_unreadable_adapter_config_names_the_file(fake_vllm, tmp_path):
    from corsa.testing import tiny_tokenizer
    from corsa.prompts import PromptFormat
    from corsa.vllm_backend import VLLMGenerator

    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"adapter_config.json.*'r'"):
        VLLMGenerator(tmp_path, PromptFormat(tiny_tokenizer(), "raw"), tmp_path)


def test_options_override_ours_and_a_failing_start_is_a_clear_error(fake_vllm, trained):
    from corsa.vllm_backend import VLLMGenerator

    model_dir, run, editor = trained
    VLLMGenerator(model_dir, editor.fmt, run / "adapter", seed=3, gpu_memory_utilization=0.5)
    assert fake_vllm.made[-1].options["gpu_memory_utilization"] == 0.5
    fake_vllm.fail_with = ValueError("Free memory on device is less than desired GPU memory utilization")
    with pytest.raises(ConfigError, match=r"vLLM could not start.*--vllm-gpu-memory"):
        VLLMGenerator(model_dir, editor.fmt, run / "adapter")


def test_vllm_under_a_launcher_is_refused_before_loading_anything(fake_vllm, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr("corsa.api.Editor.__init__", lambda *a, **k: pytest.fail("loaded a model first"))
    edits = tmp_path / "edits.jsonl"
    edits.write_text('{"prompt": "p", "target_new": "a", "target_old": "b"}\n')
    assert main(["eval", "--edits", str(edits), "--out", str(tmp_path / "m.json"), "--generator", "vllm"]) == 2
    assert "drop the launcher" in capsys.readouterr().err
