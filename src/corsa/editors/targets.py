"""What a locate-then-edit update reads from and asks of the model, at the subject's last token.

- **keys**: the input of a layer's MLP output projection at the subject's last token, averaged
  over the edit prompt and the same prompt after a few neutral context sentences (ROME §3.1,
  MEMIT §4.2: "we average over contexts" so the key stands for the subject, not one phrasing);
- **outputs**: a module's output there (a layer's hidden state for MEMIT, the projection's
  value for ROME);
- **target vectors** (ROME Eq. 4, MEMIT Eq. 16): the vector δ that, added to that output,
  makes the model answer y⁺: minimise the NLL of y⁺ over the contexts, plus a KL term that keeps
  the model's idea of the subject ("{subject} is a") where it was, plus a small decay; δ is kept
  within `clamp` times the output's norm. One δ per edit, optimised side by side (each edit's
  rows see only its own δ, so batching them changes nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..prompts import pad_id
from .layout import subject_position

# neutral sentences put before the edit prompt in the user turn (the prompt alone comes first)
CONTEXTS = ("", "Here is a fact.", "I read this in a book.")
STOP_NLL = 0.05  # an edit whose y⁺ costs less than this per token (over its contexts) has found its δ
DECAY = 1e-3     # weight of ‖δ‖²/‖h‖² (ROME's v_weight_decay scale): δ no longer than it needs to be
GROUP = 16       # edits optimised in one batch: memory grows with the edits × contexts × vocabulary


@dataclass
class Row:
    """One sequence: its token ids, the subject's last token in them, and how many final tokens are the answer."""

    ids: list[int]
    position: int
    answer: int = 0


def context_prompts(prompt: str) -> list[str]:
    return [f"{c} {prompt}".strip() for c in CONTEXTS]


def subject_rows(fmt, edit) -> list[Row]:
    """The edit prompt in every context, with the subject's last token (no answer); the first is the prompt alone."""
    return [Row(fmt.prompt_ids(p), subject_position(fmt, p, edit.subject, f" (edit {edit.id})"))
            for p in context_prompts(edit.prompt)]


def _batch(rows: list[Row], pad: int, device):
    """Left-pad `rows`; returns ids, mask and each row's subject position in the padded batch."""
    T = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, T - len(r.ids):] = torch.tensor(r.ids)
        mask[b, T - len(r.ids):] = 1
    positions = torch.tensor([T - len(r.ids) + r.position for r in rows])
    return ids.to(device), mask.to(device), positions.to(device)


def _forward(model, ids, mask, keep: int = 1):
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    return model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep, use_cache=False).logits


def _first(output):
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def capture(model, fmt, module, rows: list[Row], what: str = "input", batch_size: int = 32) -> torch.Tensor:
    """`module`'s input (what="input") or output at each row's subject position: (len(rows), d), float32."""
    pad, device = pad_id(fmt.tokenizer), next(model.parameters()).device
    out = []
    for start in range(0, len(rows), batch_size):
        ids, mask, pos = _batch(rows[start:start + batch_size], pad, device)
        got = {}
        b = torch.arange(len(pos), device=device)
        # (a hook that returns something replaces the module's input or output: these return None)
        if what == "input":
            handle = module.register_forward_pre_hook(lambda m, args: got.update(x=args[0][b, pos].float()))
        else:
            handle = module.register_forward_hook(lambda m, args, o: got.update(x=_first(o)[b, pos].float()))
        try:
            model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
                  logits_to_keep=1, use_cache=False)
        finally:
            handle.remove()
        out.append(got["x"].cpu())
    return torch.cat(out)


def keys(model, fmt, module, per_edit_rows: list[list[Row]]) -> torch.Tensor:
    """Each edit's key at `module` (a projection), averaged over its contexts: (d_in, n_edits)."""
    flat = [r for rows in per_edit_rows for r in rows]
    k = capture(model, fmt, module, flat, "input")
    n = len(per_edit_rows[0])
    return k.view(len(per_edit_rows), n, -1).mean(1).T.contiguous()


def optimise(model, fmt, module, edits, rows: list[list[Row]], settings: dict) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """δ for each edit at `module`'s output (module docstring): returns (δ (n, d), the output at
    the plain prompt's subject token before δ (n, d), and each edit's NLL per answer token at the
    returned δ, or at its last step when it never fell below STOP_NLL).

    `rows[i]` are edit i's subject_rows. settings: steps, lr, clamp, kl_weight, and eos (whether
    y⁺'s end-of-turn token is a target). Edits are optimised GROUP at a time; an edit whose NLL
    falls below STOP_NLL leaves the batch and its δ is kept as it is (Adam's momentum would
    otherwise move it on), so the steps go to the edits still far from y⁺ and an edit's δ does
    not depend on which others share its update.
    """
    out = [_optimise_group(model, fmt, module, edits[i:i + GROUP], rows[i:i + GROUP], settings)
           for i in range(0, len(edits), GROUP)]
    return (torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out]), [x for o in out for x in o[2]])


def _optimise_group(model, fmt, module, edits, rows, settings):
    pad, device = pad_id(fmt.tokenizer), next(model.parameters()).device
    per_edit: list[list[Row]] = []
    essence: list[Row] = []
    for e, subject in zip(edits, rows):
        answer = fmt.answer_ids(e.target_new, settings["eos"])
        per_edit.append([Row(r.ids + answer, r.position, len(answer)) for r in subject])
        p = f"{e.subject.strip()} is a"
        essence.append(Row(fmt.prompt_ids(p), subject_position(fmt, p, e.subject)))
    h0 = capture(model, fmt, module, [r[0] for r in rows], "output").to(device)      # (n, d)
    with torch.no_grad():
        ids, mask, _ = _batch(essence, pad, device)
        base_logp = F.log_softmax(_forward(model, ids, mask, 1)[:, -1].float(), -1)     # (n, V)
    delta = torch.zeros_like(h0, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=settings["lr"])
    limit = settings["clamp"] * h0.norm(dim=-1, keepdim=True)
    nll = torch.full((len(edits),), float("inf"))
    current: dict = {}

    def add_delta(m, args, output):  # δ of each row's edit, at its subject token
        h = _first(output)
        shift = torch.zeros_like(h).index_put((current["rows"], current["pos"]), delta[current["owner"]].to(h.dtype))
        return (h + shift, *output[1:]) if isinstance(output, tuple) else h + shift

    handle = module.register_forward_hook(add_delta)
    was_training = model.training
    model.eval()
    # only δ is optimised: with the adapter's weights frozen too, the backward stops at δ's layer
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        for _ in range(settings["steps"]):
            active = [i for i in range(len(edits)) if not float(nll[i]) < STOP_NLL]
            if not active:
                break
            answer_rows = [r for i in active for r in per_edit[i]]
            n_ctx = len(per_edit[0])
            all_rows = answer_rows + [essence[i] for i in active]
            ids, mask, pos = _batch(all_rows, pad, device)
            owner = torch.tensor([i for i in active for _ in range(n_ctx)] + active, device=device)
            current.update(rows=torch.arange(len(all_rows), device=device), pos=pos, owner=owner)
            K, T, A = max(r.answer for r in answer_rows), ids.shape[1], len(answer_rows)
            labels = ids[:A, T - K:]
            label_mask = torch.stack([torch.arange(K, device=device) >= K - r.answer for r in answer_rows]).float()
            logits = _forward(model, ids, mask, K + 1).float()                         # (R, K+1, V)
            logp = F.log_softmax(logits[:A, :-1], -1).gather(-1, labels[..., None]).squeeze(-1)
            per_row = -(logp * label_mask).sum(-1) / label_mask.sum(-1)
            per_active = per_row.view(len(active), n_ctx).mean(-1)
            nll[active] = per_active.detach().cpu()
            if not any(float(nll[i]) >= STOP_NLL for i in active):
                break  # every δ of the group is found: no step past it
            new_logp = F.log_softmax(logits[A:, -1], -1)
            old = base_logp[active]
            kl = (old.exp() * (old - new_logp)).sum(-1)
            decay = delta[active].norm(dim=-1).square() / h0[active].norm(dim=-1).square()
            loss = (per_active + settings["kl_weight"] * kl + DECAY * decay).sum()
            (grad,) = torch.autograd.grad(loss, [delta])
            done = torch.tensor([float(x) < STOP_NLL for x in nll], device=device)
            kept = delta.detach()[done].clone()
            delta.grad = grad
            opt.step()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                delta[done] = kept  # a found δ stays found
                # stay within clamp · ‖h‖ (ROME's clamp_norm_factor)
                delta.mul_(torch.clamp(limit / delta.norm(dim=-1, keepdim=True).clamp_min(1e-12), max=1.0))
    finally:
        handle.remove()
        model.train(was_training)
        for p in frozen:
            p.requires_grad_(True)
    return delta.detach().cpu(), h0.cpu(), nll.tolist()


def reached(model, fmt, module, plain: list[Row], before: torch.Tensor, delta: torch.Tensor) -> float:
    """How far `module`'s output at the plain prompts' subject token went from `before` towards
    `before + delta`, averaged over edits: 1 − ‖target − now‖ / ‖δ‖ (1: all the way, 0: not at all)."""
    now = capture(model, fmt, module, plain, "output")
    gap = (before + delta - now).norm(dim=-1) / delta.norm(dim=-1).clamp_min(1e-12)
    return float((1 - gap).mean())
