"""Turning (prompt, answer) pairs into token batches (scoring them is corsa.scoring).

With a chat template the prompt is the user turn and the answer the assistant turn, closed by
the end-of-turn (eos) token; without one the answer is a raw continuation after a space.
Sequences are **left**-padded so every answer ends at the last position: the model then only
has to produce logits for the last K positions (K = longest answer), which skips most of the
vocabulary projection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import ConfigError, DataError


def pad_id(tokenizer) -> int:
    """The padding token, or eos where the tokenizer has none (padded positions are masked)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


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
        decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        self.control = sorted({*getattr(tokenizer, "all_special_tokens", []),
                               *(t.content for t in decoder.values() if getattr(t, "special", False))} - {""},
                              key=len, reverse=True)

    def check_text(self, text: str) -> None:
        """Refuse text that holds one of the tokenizer's control tokens (`<|im_end|>`, `<|im_start|>` …).

        Written into a prompt or an answer they would be read as the tokens themselves: a user
        text could close its turn and forge the assistant's, or put an end of turn inside y⁺.
        """
        found = next((t for t in self.control if t in text), None)
        if found is not None:
            raise DataError(f"holds the tokenizer's control token {found!r}, which would be read as that token "
                            f"(ending or forging a chat turn), not as text; remove it")

    def prompt_ids(self, prompt: str) -> list[int]:
        return self.few_shot_ids((), prompt)

    def few_shot_ids(self, shots, prompt: str) -> list[int]:
        """`prompt` after worked examples (prompt, answer), if any: earlier chat turns, or (raw) one line each.

        The examples show what an answer looks like (corsa.old_answers asks for the old answer
        in y⁺'s form this way); in a chat each example's answer turn closes with the end of turn,
        as a trained y⁺ does.
        """
        self.check_text(prompt)
        if self.chat:
            turns = [{"role": role, "content": text} for q, a in shots
                     for role, text in (("user", q), ("assistant", a))]
            text = self.tokenizer.apply_chat_template(turns + [{"role": "user", "content": prompt}],
                                                      add_generation_prompt=True, tokenize=False)
            return self.tokenizer(text, add_special_tokens=False).input_ids
        return self.tokenizer("".join(f"{q} {a}\n" for q, a in shots) + prompt).input_ids

    def raw(self) -> "PromptFormat":
        """The same tokenizer reading prompts as plain text, without the chat template: the prompt's
        words are continued as a sentence (corsa.old_answers reads the old answer this way too)."""
        return self if not self.chat else PromptFormat(self.tokenizer, "raw")

    def prefill_ids(self, prompt: str) -> list[int]:
        """The prompt's own words as the start of the answer turn (chat), so that the model completes
        the statement instead of replying to it; nothing for raw prompts, which are completed already."""
        return self.tokenizer(prompt.strip(), add_special_tokens=False).input_ids if self.chat else []

    def answer_ids(self, answer: str, eos: bool = True) -> list[int]:
        """The answer's tokens; with a chat template closed by the end-of-turn token unless `eos` is off."""
        answer = answer.strip()
        if answer != getattr(self.tokenizer, "eos_token", None):  # y⁻ "the model said nothing": the end of turn
            self.check_text(answer)
        if self.chat:
            return self.tokenizer(answer, add_special_tokens=False).input_ids + ([self.tokenizer.eos_token_id] * eos)
        return self.tokenizer(" " + answer, add_special_tokens=False).input_ids

    def decode_answer(self, ids: list[int]) -> str:
        """A generated continuation as text: up to the end of turn, and (raw) the end of the line."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if not self.chat:
            text = text.split("\n")[0]
        return text.strip()


def source_file(source: str | None) -> str | None:
    """The file named in an Edit's `source` ("format:file")."""
    return source.split(":", 1)[-1] if source else None


@dataclass
class Encoded:
    """One edit, tokenised: the prompt, both answers, and any further rejected answers (negatives)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int] | None
    extra: list[list[int]] = field(default_factory=list)
    online: bool = False  # the last of `extra` is an online negative (refreshed every pass)
    rephrased: list[list[int]] = field(default_factory=list)  # other wordings of the prompt (corsa.rephrase)


def check_edit_text(fmt: PromptFormat, e) -> None:
    """Refuse an edit whose prompt, y⁺ or y⁻ holds a control token (PromptFormat.check_text), naming
    the file, the record and the field; y⁻ may be the end-of-turn token alone ("said nothing")."""
    for name, text in (("prompt", e.prompt), ("target_new", e.target_new), ("target_old", e.target_old)):
        try:
            if text is not None and text.strip() != getattr(fmt.tokenizer, "eos_token", None):
                fmt.check_text(text)
        except DataError as err:
            raise DataError(str(err), path=source_file(e.source), record=e.id, field=name) from None


def encode_edits(fmt: PromptFormat, edits, max_length: int | None, need_rejected: bool,
                 eos: bool = True) -> list[Encoded]:
    """Tokenise every edit; an edit longer than the model's context is a clear error.

    eos=False leaves the end-of-turn token off the answers (EditConfig.train_eos).
    """
    out = []
    for i, e in enumerate(edits):
        check_edit_text(fmt, e)
        p = fmt.prompt_ids(e.prompt)
        c = fmt.answer_ids(e.target_new, eos)
        r = fmt.answer_ids(e.target_old, eos) if need_rejected else None
        longest = len(p) + max(len(c), len(r) if r else 0)
        if max_length is not None and longest > max_length:
            # the field named is the longest part: a 5 MB y⁺ is the answer's fault, not the prompt's
            parts = {"prompt": len(p), "target_new": len(c), "target_old": len(r) if r else 0}
            field = max(parts, key=parts.get)
            raise DataError(f"prompt plus answer is {longest} tokens, more than the model's context of "
                            f"{max_length} ({field} alone is {parts[field]})", path=source_file(e.source),
                            record=e.id, field=field)
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


@dataclass
class SharedBatch:
    """Each prompt once, then n answers continuing it.

    prompt_ids, prompt_mask, prompt_positions: (B, P), left-padded. answer_ids, answer_mask:
    (B·n, K), right-padded; row b·n + s is answer s of prompt b.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    prompt_positions: torch.Tensor
    answer_ids: torch.Tensor
    answer_mask: torch.Tensor

    @property
    def n_answers(self) -> int:
        return self.answer_ids.shape[0] // self.prompt_ids.shape[0]

    def to(self, device) -> "SharedBatch":
        return SharedBatch(*(t.to(device) for t in (self.prompt_ids, self.prompt_mask, self.prompt_positions,
                                                     self.answer_ids, self.answer_mask)))


def collate_shared(prompts: list[list[int]], answers: list[list[list[int]]], pad_id: int) -> SharedBatch:
    """Left-pad the prompts; right-pad the n answers of every prompt (answers[b] holds prompt b's)."""
    P = max(len(p) for p in prompts)
    flat_answers = [a for per_prompt in answers for a in per_prompt]
    K = max(len(a) for a in flat_answers)
    B = len(prompts)
    prompt_ids = torch.full((B, P), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((B, P), dtype=torch.long)
    answer_ids = torch.full((len(flat_answers), K), pad_id, dtype=torch.long)
    answer_mask = torch.zeros((len(flat_answers), K), dtype=torch.long)
    for b, p in enumerate(prompts):
        prompt_ids[b, P - len(p):] = torch.tensor(p, dtype=torch.long)
        prompt_mask[b, P - len(p):] = 1
    for r, a in enumerate(flat_answers):
        answer_ids[r, :len(a)] = torch.tensor(a, dtype=torch.long)
        answer_mask[r, :len(a)] = 1
    positions = (prompt_mask.cumsum(-1) - 1).clamp_min(0)
    return SharedBatch(prompt_ids, prompt_mask, positions, answer_ids, answer_mask)
