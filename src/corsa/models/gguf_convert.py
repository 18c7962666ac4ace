"""GGUF → safetensors: a quantised GGUF file dequantised to a plain float32 model folder (transformers' reader)."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import torch


def convert(gguf: Path, out: Path, progress: bool) -> None:
    """Dequantise `gguf` to float32 and save it as a plain safetensors model folder in `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # The GGUF reader's progress bar has no off switch but where it writes: silence stderr, and
    # keep it only on a terminal (redirected into a log, each redraw would be a line of its own)
    shown = progress and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    with open(os.devnull, "w") as devnull, \
            contextlib.redirect_stderr(sys.stderr if shown else devnull):
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                      dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # A GGUF-loaded model keeps a quantization_config that makes transformers refuse to train
        # or save it, although its weights are already plain float32: rebuild one without it.
        config_dict = loaded.config.to_dict()
        config_dict.pop("quantization_config", None)
        config_dict.pop("_name_or_path", None)
        config = type(loaded.config).from_dict(config_dict)
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(loaded.state_dict(), strict=True)
        plain.generation_config = loaded.generation_config
        plain.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
