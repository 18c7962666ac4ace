"""Checks on weights: damaged safetensors files, and a base model's fingerprint."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch


def damaged_weights(folder: str | os.PathLike) -> str | None:
    """Why a folder's safetensors files cannot be read (truncated, random bytes, empty); None if they can.

    Reads each file's header and checks that its tensors cover the file exactly, as loading does,
    without loading the weights.
    """
    from safetensors import SafetensorError, safe_open

    for file in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                f.keys()
        except (SafetensorError, OSError) as e:
            return f"{file.name}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
    return None


def model_fingerprint(model, samples_per_tensor: int = 8) -> str:
    """A 16-hex-digit identifier of a base model's architecture and weights.

    Hashes the model type, every parameter's name and shape, and `samples_per_tensor` evenly
    spaced values of each, rounded to bfloat16 so that float32 and bfloat16 loads of the same
    checkpoint agree. LoRA layers injected by PEFT are ignored (names normalised, ``lora_``
    parameters skipped), so a model gives the same fingerprint before and after an adapter is
    attached; merged weights give a different one, as they should.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    h = hashlib.sha256(str(getattr(base.config, "model_type", type(base).__name__)).encode())
    for name, param in sorted(base.named_parameters(), key=lambda item: item[0]):
        if "lora_" in name:
            continue
        name = name.replace(".base_layer", "")
        h.update(f"{name}:{tuple(param.shape)};".encode())
        flat = param.detach().reshape(-1)
        count = min(samples_per_tensor, flat.numel())
        # Integer arithmetic: a float linspace rounds past the last index of large tensors.
        index = torch.arange(count, device=flat.device) * (flat.numel() - 1) // max(count - 1, 1)
        h.update(flat[index].to(torch.bfloat16).float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]
