"""Loading a frozen base model and its tokenizer, from safetensors only, on the device and dtype asked for."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from ..errors import ConfigError, ModelError
from .aliases import ALIASES
from .hub import resolve_model
from .weights import damaged_weights

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or ``"auto"``: CUDA when available, else CPU; otherwise the named device."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device} was asked for but CUDA is not available; use --device cpu")
    return device


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None``: bfloat16 on CUDA (half the memory, fp32 range), float32 elsewhere."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ConfigError(f"unknown dtype '{dtype}'; use one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


_IMPORTING = threading.Lock()


def import_libraries():
    """Import transformers' model classes and PEFT once, under a lock: transformers resolves its
    names lazily, and two threads making their first call at once could see a half-made module
    (ImportError: cannot import name 'AutoModelForCausalLM'). Returns (AutoModelForCausalLM, AutoTokenizer)."""
    with _IMPORTING:
        import peft  # noqa: F401
        import peft.tuners.lora  # noqa: F401
        from transformers import AutoModelForCausalLM, AutoTokenizer

        return AutoModelForCausalLM, AutoTokenizer


_LOADING = threading.RLock()


def load_model(name_or_path: str, device: str | torch.device | None = None,
               dtype: str | torch.dtype | None = None, trust_remote_code: bool = False):
    """Load a frozen base model and its tokenizer: ``(model, tokenizer)``.

    The model is in eval mode with every parameter ``requires_grad=False`` (edits train only the
    adapter). Weights come from safetensors only. A tokenizer without a pad token pads with eos.

    One load at a time in a process: transformers builds a model on the meta device through
    process-wide state, so two threads loading at once break each other ("Cannot copy out of
    meta tensor").
    """
    with _LOADING:
        return _load_model(name_or_path, device, dtype, trust_remote_code)


def _load_model(name_or_path, device, dtype, trust_remote_code):
    AutoModelForCausalLM, AutoTokenizer = import_libraries()

    device = pick_device(device)
    dtype = pick_dtype(dtype, device)
    source = resolve_model(name_or_path)
    if Path(source).is_dir():
        _check_safetensors(Path(source))
        damage = damaged_weights(source)
        if damage:
            if name_or_path in ALIASES:
                fix = (f"delete that folder (or run `corsa prepare-model {name_or_path}`) and corsa converts "
                       f"it again")
            else:
                fix = "copy the model again from where it came"
            raise ModelError(f"the weights of model '{name_or_path}' in {source} are damaged ({damage}): the "
                             f"file is truncated or is not safetensors. {fix[0].upper() + fix[1:]}")
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, use_safetensors=True,
                                                     trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load model '{name_or_path}' from {source}: "
                         f"{str(e).strip().splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"the tokenizer of '{name_or_path}' has neither a pad nor an eos token, "
                             f"so batches cannot be padded")
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.to(device).eval()
    model.requires_grad_(False)
    return model, tokenizer


def _check_safetensors(folder: Path) -> None:
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelError(f"{folder} holds only pickle weights ({', '.join(pickles)}), which can run "
                         f"arbitrary code when loaded; corsa loads safetensors only. Convert them with "
                         f"a tool you trust to model.safetensors")
    raise ModelError(f"{folder} has no *.safetensors weights")
