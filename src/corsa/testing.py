"""A tiny Llama built in code, for tests and benchmarks: no download, seconds on a CPU."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .errors import ConfigError
from .publish import atomic_dir


# the training settings under which the tiny model learns in a few steps: the one setting of every
# test that trains (a test that needs another says which and why, as {**FAST, ...})
FAST = {"epochs": 2, "batch_size": 2, "grad_accum": 1, "lr": 1e-2, "progress": False}


def flags(options: dict) -> list[str]:
    """`options` as command-line flags (FAST for `corsa edit` or `corsa bench`); progress=False is --quiet."""
    out = []
    for key, value in options.items():
        out += ["--quiet"] if key == "progress" and not value else ["--" + key.replace("_", "-"), str(value)]
    return out


# The minimal ChatML template of SmolLM2 and Qwen: enough to exercise chat-template code paths.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_TINY_SPECIALS = {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|pad|>"}


def tiny_tokenizer(chat_template: bool = True, max_length: int = 512):
    """A byte-level tokenizer built in code (no download): one token per UTF-8 byte + specials.

    It encodes any text and decodes it back exactly; `<|im_start|>`/`<|im_end|>` are special
    tokens as in ChatML, and a distinct pad token lets tests catch padding that is not masked.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"])
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=max_length,
                                   chat_template=CHATML_TEMPLATE if chat_template else None,
                                   **_TINY_SPECIALS)


def tiny_llama(seed: int = 0, vocab: int | None = None, hidden: int = 32, layers: int = 2, heads: int = 4,
               kv_heads: int = 2, intermediate: int = 64, chat_template: bool = True,
               max_positions: int = 512):
    """A randomly initialised ``LlamaForCausalLM`` and :func:`tiny_tokenizer`: ``(model, tokenizer)``.

    Same seed, same weights; the global RNG is left untouched. `vocab` defaults to the
    tokenizer's size (260) and may be larger (rows no text maps to), never smaller. Float32, CPU,
    train mode, all parameters trainable — as built, not as :func:`corsa.models.load_model` returns.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer(chat_template=chat_template, max_length=max_positions)
    vocab = len(tokenizer) if vocab is None else vocab
    if vocab < len(tokenizer):
        raise ConfigError(f"vocab={vocab} is smaller than the tiny tokenizer ({len(tokenizer)} tokens)")
    if hidden % heads or heads % kv_heads:
        raise ConfigError(f"hidden={hidden} must be a multiple of heads={heads}, "
                          f"and heads a multiple of kv_heads={kv_heads}")
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=max_positions, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model, tokenizer


def save_tiny_llama(path: str | os.PathLike, seed: int = 0, **options) -> Path:
    """Save :func:`tiny_llama` (`options` go to it) as a safetensors model folder for :func:`corsa.models.load_model`."""
    model, tokenizer = tiny_llama(seed=seed, **options)
    path = Path(path)
    with atomic_dir(path) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    return path
