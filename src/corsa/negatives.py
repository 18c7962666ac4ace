"""Rejected answers beyond y⁻: conflict with other edits, not only with the prior.

On a small model the edits an update loses are rarely lost to their old answer y⁻: most are
answered with *another edit's* y⁺ of the same relation (docs/results.md). DPO's margin against
y⁻ cannot see that third answer, so these negatives put it in front of DPO:

- **interference**: for an edit, the y⁺ of the other edits seen so far whose prompt has the same
  template (the prompt with the subject taken out), or is the same prompt edited before;
- **online**: the model's current greedy answer to the edit prompt when it does not contain y⁺,
  refreshed every pass (KDPO, Rozner et al., EMNLP 2024, "Knowledge Editing through Direct
  Preference Optimization", uses the model's current output as the rejected answer).

Each becomes one more (y⁺, y⁻ᵢ) pair of the DPO loss (objectives.dpo_loss with M negatives).
"""

from __future__ import annotations

from .metrics import contains, normalise
from .records import Edit


def template(edit: Edit) -> str | None:
    """The edit prompt with its subject replaced by {}, normalised; None without a subject in it."""
    if not edit.subject:
        return None
    p, s = normalise(edit.prompt), normalise(edit.subject)
    return p.replace(s, "{}") if s and s in p else None


def interference(edits: list[Edit], pool: list[Edit], limit: int) -> list[list[str]]:
    """For each edit, up to `limit` y⁺ of other edits in `pool` that share its template or prompt.

    The most recent edits of `pool` (its end) come first. An answer that is the edit's own y⁺
    or y⁻ (normalised) is never a negative, nor is the same answer twice.
    """
    by_key: dict[str, list[Edit]] = {}
    for e in reversed(pool):
        for key in {normalise(e.prompt), template(e)} - {None}:
            by_key.setdefault(key, []).append(e)
    out = []
    for e in edits:
        own = {normalise(e.target_new), normalise(e.target_old)}
        found: list[str] = []
        for key in dict.fromkeys([normalise(e.prompt), template(e)]):
            for other in by_key.get(key, []) if key else []:
                answer = normalise(other.target_new)
                if other is not e and answer and answer not in own and answer not in map(normalise, found):
                    found.append(other.target_new)
        out.append(found[:limit])
    return out


def online(answer: str, edit: Edit) -> str | None:
    """The model's greedy `answer` as a negative for `edit`: None when it holds y⁺ or is y⁻ or empty."""
    if not normalise(answer) or contains(answer, edit.target_new) or normalise(answer) == normalise(edit.target_old):
        return None
    return answer
