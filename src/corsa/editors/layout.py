"""Where a locate-then-edit method edits: the decoder layers, their MLP output projection, the
subject's last token. Found from the model's config and the tokenizer, never from its name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import ConfigError, DataError


@dataclass(frozen=True)
class Layout:
    """The decoder stack of a model: the path of its layer list and, inside a layer, of the MLP's
    output projection (the linear map from the MLP's inner width to the model's width)."""

    layers: str        # e.g. "model.layers"
    projection: str    # e.g. "mlp.down_proj"
    n_layers: int
    d_in: int          # the MLP's inner width: the keys' dimension
    d_out: int         # the model's width: the values' dimension

    def layer(self, model, i: int):
        return _get(_unwrap(model), self.layers)[i]

    def module(self, model, i: int):
        """Layer i's MLP output projection (under a PEFT adapter, the LoRA layer that wraps it)."""
        return _get(self.layer(model, i), self.projection)

    def weight(self, model, i: int) -> torch.Tensor:
        """The frozen base weight of layer i's projection (d_out × d_in)."""
        m = self.module(model, i)
        return getattr(m, "base_layer", m).weight

    def module_names(self, layers: list[int]) -> list[str]:
        """The projections' full module names (for a LoRA config's target_modules)."""
        return [f"{self.layers}.{i}.{self.projection}" for i in layers]


def _unwrap(model):
    """The transformers model under a PEFT wrapper."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _get(module, path: str):
    for part in path.split("."):
        module = getattr(module, part)
    return module


def find_layout(model) -> Layout:
    """The decoder layer list (a ModuleList of config.num_hidden_layers blocks) and, in its blocks,
    the one linear map from config.intermediate_size to config.hidden_size."""
    base = _unwrap(model)
    config = getattr(base.config, "text_config", None) or base.config
    n, hidden, inner = (getattr(config, k, None) for k in ("num_hidden_layers", "hidden_size", "intermediate_size"))
    if not (n and hidden and inner):
        raise ConfigError("this model's config does not give num_hidden_layers, hidden_size and intermediate_size, "
                          "so the MLP layers that ROME, MEMIT and AlphaEdit edit cannot be found; use a "
                          "fine-tuning method (lora, corsa) for it")
    for name, module in base.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            block = module[0]
            found = [p for p, m in block.named_modules()  # (a PEFT layer's own base_layer is the same map)
                     if _in_out(m) == (inner, hidden) and not _peft_part(p)]
            if len(found) == 1:
                return Layout(name, found[0], n, inner, hidden)
    raise ConfigError(f"no decoder block of this model has one linear map from its MLP width ({inner}) to its "
                      f"width ({hidden}), so ROME, MEMIT and AlphaEdit do not know what to edit; use a "
                      f"fine-tuning method (lora, corsa) for it")


def _peft_part(path: str) -> bool:
    """A PEFT layer's inner modules (its base_layer, its lora_A/lora_B maps), not a layer of the model."""
    return any(part == "base_layer" or part.startswith("lora_") for part in path.split("."))


def _in_out(module) -> tuple[int, int] | None:
    base = getattr(module, "base_layer", module)
    if isinstance(base, torch.nn.Linear):
        return base.in_features, base.out_features
    return None


# The layers the papers edit, as fractions of the depth: ROME edits layer 5 of GPT-J's 28 (and
# 17 of GPT-2 XL's 48); MEMIT layers 3–8 of GPT-J's 28, AlphaEdit 4–8 of Llama3-8B's 32.
def default_layers(method: str, n_layers: int) -> list[int]:
    """The edited layers for `method` (rome: one; memit, alphaedit: a range) on a model of `n_layers`."""
    if method == "rome":
        return [min(n_layers - 1, round(n_layers * 5 / 28))]
    first, last = round(n_layers * 4 / 32), round(n_layers * 8 / 32)
    return list(range(min(first, n_layers - 1), min(last, n_layers - 1) + 1))


def parse_layers(text: str, method: str, n_layers: int) -> list[int]:
    """`--layers`: "auto" (default_layers), "5", "4-8" or "3,5,7"; refused outside the model's depth."""
    text = str(text).strip()
    if text == "auto":
        return default_layers(method, n_layers)
    try:
        out: list[int] = []
        for part in text.split(","):
            a, _, b = part.partition("-")
            out.extend(range(int(a), int(b) + 1) if b else [int(a)])
    except ValueError:
        raise ConfigError(f"invalid --layers {text!r}: give 'auto', a layer (5), a range (4-8) or a list (3,5,7)") from None
    bad = [i for i in out if not 0 <= i < n_layers]
    if bad or not out:
        raise ConfigError(f"invalid --layers {text!r}: this model's layers are 0 to {n_layers - 1}")
    if method == "rome" and len(set(out)) != 1:
        raise ConfigError(f"ROME edits one layer; --layers {text!r} names {len(set(out))}")
    return sorted(set(out))


def subject_position(fmt, prompt: str, subject: str | None, where: str = "") -> int:
    """The index, in fmt.prompt_ids(prompt), of the last token of the subject's last mention.

    The prompt is formatted as it is for training and answering (the chat template's user turn),
    its text tokenised with character offsets, and the token that holds the subject's last
    character taken. `where` names the edit in the error for a subject the prompt does not name.
    """
    ids = fmt.prompt_ids(prompt)
    tok = fmt.tokenizer
    text = (tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
            if fmt.chat else prompt)
    # the subject's last mention inside the prompt's own text (never in a system turn or a role header),
    # matched case-insensitively on the original characters so the offsets stay those of `text`
    start = text.rfind(prompt)
    found = [m for m in re.finditer(re.escape(subject.strip()), prompt, flags=re.IGNORECASE)] \
        if subject and subject.strip() and start >= 0 else []
    if not found:
        raise DataError(f"the subject {subject!r} is not in the prompt {prompt!r}; ROME, MEMIT and AlphaEdit edit "
                        f"the subject's last token, so every edit needs a subject its prompt names{where}",
                        field="subject")
    end = start + found[-1].end()
    try:
        enc = tok(text, add_special_tokens=not fmt.chat, return_offsets_mapping=True)
    except NotImplementedError:
        raise ConfigError("this tokenizer cannot give character offsets (a slow tokenizer), so the subject's token "
                          "cannot be found; load the model's fast tokenizer") from None
    if list(enc.input_ids) != list(ids):  # the offsets must index the very tokens the model sees
        raise DataError(f"the prompt {prompt!r} tokenises differently with character offsets; cannot find its "
                        f"subject's token", field="prompt")
    return max(i for i, (s, e) in enumerate(enc.offset_mapping) if s < end and e > s)
