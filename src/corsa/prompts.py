"""Turning (prompt, answer) pairs into token batches.

With a chat template the prompt is the user turn and the answer the assistant turn, closed by
the end-of-turn (eos) token; without one the answer is a raw continuation after a space.
Sequences are **left**-padded so every answer ends at the last position: the model then only
has to produce logits for the last K positions (K = longest answer), which skips most of the
vocabulary projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import ConfigError, DataError


class PromptFormat:
    """Tokenises prompts and answers the same way for training, scoring and generation."""

    def __init__(self, tokenizer, template: str = "auto"):
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        if template == "chat" and not has_chat:
            raise ConfigError("template 'chat' was asked for, but this tokenizer has no chat template; use 'raw'")
        self.tokenizer = tokenizer
        self.chat = has_chat if template == "auto" else template == "chat"
        self.name = "chat" if self.chat else "raw"
        if self.chat and tokenizer.eos_token_id is None:
            raise ConfigError("the tokenizer has a chat template but no eos token to close the answer turn")

    def prompt_ids(self, prompt: str) -> list[int]:
        if self.chat:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                      add_generation_prompt=True, tokenize=False)
            return self.tokenizer(text, add_special_tokens=False).input_ids
        return self.tokenizer(prompt).input_ids

    def answer_ids(self, answer: str) -> list[int]:
        answer = answer.strip()
        if self.chat:
            return self.tokenizer(answer, add_special_tokens=False).input_ids + [self.tokenizer.eos_token_id]
        return self.tokenizer(" " + answer, add_special_tokens=False).input_ids

    def decode_answer(self, ids: list[int]) -> str:
        """A generated continuation as text: up to the end of turn, and (raw) the end of the line."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if not self.chat:
            text = text.split("\n")[0]
        return text.strip()


@dataclass
class Encoded:
    """One edit, tokenised: the prompt and both answers."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int] | None


def encode_edits(fmt: PromptFormat, edits, max_length: int | None, need_rejected: bool) -> list[Encoded]:
    """Tokenise every edit; an edit longer than the model's context is a clear error."""
    out = []
    for i, e in enumerate(edits):
        p = fmt.prompt_ids(e.prompt)
        c = fmt.answer_ids(e.target_new)
        r = fmt.answer_ids(e.target_old) if need_rejected else None
        longest = len(p) + max(len(c), len(r) if r else 0)
        if max_length is not None and longest > max_length:
            raise DataError(f"prompt plus answer is {longest} tokens, more than the model's context of "
                            f"{max_length}", path=e.source, record=e.id, field="prompt")
        out.append(Encoded(p, c, r))
    return out


@dataclass
class Batch:
    """Left-padded prompt+answer sequences; the answers occupy the last positions.

    input_ids, attention_mask, position_ids: (B, T). labels, label_mask: (B, K), the last K
    tokens of each row and which of them are answer tokens.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    label_mask: torch.Tensor

    @property
    def n_answer_tokens(self) -> torch.Tensor:
        return self.label_mask.sum(-1)

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.position_ids,
                                               self.labels, self.label_mask)))


def collate(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> Batch:
    """Left-pad (prompt, answer) pairs into one batch."""
    seqs = [p + a for p, a in pairs]
    T = max(len(s) for s in seqs)
    K = max(len(a) for _, a in pairs)
    B = len(seqs)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    label_mask = torch.zeros((B, K), dtype=torch.float32)
    for b, ((_, a), s) in enumerate(zip(pairs, seqs)):
        input_ids[b, T - len(s):] = torch.tensor(s, dtype=torch.long)
        attention_mask[b, T - len(s):] = 1
        label_mask[b, K - len(a):] = 1
    # positions count real tokens only, so a padded row sees the same positions as alone
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    return Batch(input_ids, attention_mask, position_ids, input_ids[:, T - K:].clone(), label_mask)


def score(model, batch: Batch) -> torch.Tensor:
    """log p(answer | prompt) for every row of the batch, summed over answer tokens: (B,)."""
    from .objectives import answer_logprobs

    K = batch.labels.shape[1]
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                position_ids=batch.position_ids, logits_to_keep=K + 1, use_cache=False)
    # the logit at position t predicts token t+1: drop the last one
    return answer_logprobs(out.logits[:, :-1], batch.labels, batch.label_mask)
