"""Generation with vLLM (optional, GPU): the generated metrics of `corsa eval --generator vllm`.

vLLM serves the base model once and applies our saved adapter per request (``LoRARequest``), so
the unedited and the edited answers come from one engine. Prompts are passed as token ids made
by our own :class:`~corsa.prompts.PromptFormat`, and answers are decoded by its ``decode_answer``,
so the prompt is exactly that of training and of :func:`corsa.generate.generate`. One difference
remains: vLLM also stops at end tokens listed in the model's ``generation_config`` besides the
tokenizer's eos, where transformers (given ``eos_token_id``) stops at that one only.
Install with ``pip install 'corsa-edit[vllm]'`` on a CUDA machine; the CPU default stays the
transformers path.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ConfigError
from .files import MAX_SMALL_FILE, read_text_bounded
from .prompts import PromptFormat

# ranks vLLM's LoRA kernels accept for max_lora_rank (newer versions add 1); we round up to one
_VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def _free_gpu_fraction(margin: float = 0.05) -> float | None:
    """What vLLM may take: the GPU memory still free (corsa's own model is already loaded), less a margin."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return max(0.05, min(0.9, free / total - margin))


def _vllm():
    try:
        import vllm
        from vllm.lora.request import LoRARequest
    except ImportError as exc:
        raise ConfigError("--generator vllm needs vLLM, which is not installed: pip install 'corsa-edit[vllm]' "
                          "(CUDA only; the default --generator hf needs nothing more)") from exc
    return vllm, LoRARequest


def adapter_rank(adapter_dir: str | Path) -> int:
    """The LoRA rank in a saved adapter's ``adapter_config.json``, for vLLM's ``max_lora_rank``."""
    path = Path(adapter_dir) / "adapter_config.json"
    try:  # bounded, regular files only: a FIFO or /dev/zero under the name is refused unread
        r = int(json.loads(read_text_bounded(path, MAX_SMALL_FILE, "adapter config"))["r"])
    except ConfigError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: cannot read the adapter's rank (field 'r'): {exc}") from exc
    return r


class VLLMGenerator:
    """Greedy or sampled answers from vLLM, with or without one saved corsa adapter.

    model_dir: the base model's local folder (``corsa.models.resolve_model`` of an alias);
    adapter_dir: the folder holding ``adapter_config.json`` and the weights, or ``None``.
    Extra keyword arguments go to ``vllm.LLM`` (``gpu_memory_utilization``, ``dtype``, …) and
    override ours. vLLM refuses to start when less GPU memory is free than it is told to take,
    so by default it is told to take what is free.
    """

    def __init__(self, model_dir: str | Path, fmt: PromptFormat, adapter_dir: str | Path | None = None,
                 **llm_kwargs):
        vllm, LoRARequest = _vllm()
        self.fmt = fmt
        self._vllm = vllm
        self.lora = None
        options = dict(model=str(model_dir), tokenizer=str(model_dir), seed=0)
        fraction = _free_gpu_fraction()
        if fraction is not None:
            options["gpu_memory_utilization"] = fraction
        if adapter_dir is not None:
            r = adapter_rank(adapter_dir)
            fits = [x for x in _VLLM_RANKS if x >= r]
            if not fits:
                raise ConfigError(f"{adapter_dir}: LoRA rank {r} is above the largest vLLM serves ({_VLLM_RANKS[-1]})")
            options.update(enable_lora=True, max_lora_rank=fits[0], max_loras=1)
            self.lora = LoRARequest("corsa", 1, str(adapter_dir))
        options.update(llm_kwargs)
        try:
            self.llm = vllm.LLM(**options)
        except (ValueError, RuntimeError) as exc:  # vLLM reports bad settings and lack of memory so
            raise ConfigError(f"vLLM could not start on {model_dir}: {exc} (--vllm-gpu-memory sets the fraction "
                              f"of the GPU it may take; --generator hf needs no vLLM)") from exc

    def generate(self, prompts: list[str], max_new_tokens: int, adapter: bool = True, num_samples: int = 0,
                 temperature: float = 1.0, seed: int = 0) -> list[str] | list[list[str]]:
        """Like :func:`corsa.generate.generate`: one answer per prompt, or a list of samples each.

        Sampling seeds every request with `seed` (vLLM's per-request seeds), so the draws repeat
        from run to run but are not the transformers path's single random stream.
        """
        if adapter and self.lora is None:
            raise ConfigError("this vLLM generator was built without an adapter; pass adapter_dir")
        n = max(num_samples, 1)
        eos = self.fmt.tokenizer.eos_token_id
        params = self._vllm.SamplingParams(
            n=n, max_tokens=max_new_tokens, temperature=temperature if num_samples > 0 else 0.0, top_p=1.0,
            top_k=-1 if num_samples > 0 else 1, seed=seed if num_samples > 0 else None,
            stop_token_ids=[eos] if eos is not None else None, detokenize=False)  # we decode the ids ourselves
        requests = [{"prompt_token_ids": self.fmt.prompt_ids(p)} for p in prompts]
        try:
            outputs = self.llm.generate(requests, params, lora_request=self.lora if adapter else None,
                                        use_tqdm=False)
        except ValueError as exc:  # e.g. a prompt longer than the engine's max_model_len
            raise ConfigError(f"vLLM refused the generation request: {exc}") from exc
        answers = []
        for out in outputs:  # vLLM returns outputs in the order of the requests
            texts = [self.fmt.decode_answer(list(c.token_ids)) for c in out.outputs]
            answers.append(texts if num_samples > 0 else texts[0])
        return answers
