"""The adapter's scope: which prompts the edited model answers with its adapter.

A LoRA adapter trained on a stream of edits changes the model on every prompt, not only on
the edited facts: on the bundled 135M model every method's generated locality is 0% and the
neighbourhood score falls from 58% to 25–30% (docs/results.md, "Edits that last"), and no
training-side remedy we measured (a KL term on anchor prompts, not training the end of turn,
negatives beyond y⁻) moved either. So the edited model routes instead:

- ``scope="all"``: the adapter answers every prompt (a plain LoRA model, and the paper's).
- ``scope="subject"``: the adapter answers a prompt only when the prompt names the subject of
  an edit the adapter holds; every other prompt is answered by the unedited model, exactly.

This is a scope classifier in the sense of SERAC (Mitchell et al., "Memory-Based Model Editing
at Scale", ICML 2022), which routes in-scope inputs to the edit and the rest to the base model,
and of GRACE's deferral radius (Hartvigsen et al., NeurIPS 2023). Our key is the edit's
subject, the entity that ROME (Meng et al., NeurIPS 2022) finds a fact is recalled through,
matched in the prompt as whole words, case- and whitespace-normalised: the one matching rule
of :func:`corsa.metrics.contains`. An edit without a subject, or whose own prompt does not
name it, is keyed by its whole prompt.

What it costs: a rephrasing that does not name the subject (an alias, a pronoun, a multi-hop
question about another entity) gets the unedited model's answer, so generality on such
rephrasings and MQuAKE portability can fall; a prompt that names an edited subject in passing
gets the adapter. The adapter's weights are unchanged by the scope: only who answers changes,
so a scoped adapter cannot be merged into the base weights without losing the gate.

The scope gates answering and scoring (:meth:`corsa.Editor.ask`, :func:`corsa.evaluate`, the
bench, vLLM). Training uses it in one place: the preservation term drops anchors it leaves to
the unedited model (corsa.lifelong); the edit prompts it trains on are in scope.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from .unedited import adapter_off
from .metrics import contains, mentions_any

MODES = ("all", "subject")

T = TypeVar("T")
R = TypeVar("R")


def _named(edit) -> bool:
    """The edit has a subject and its own prompt names it."""
    return bool(edit.subject) and contains(edit.prompt, edit.subject)


def key(edit) -> str:
    """What a prompt must name for `edit` to be in scope: its subject, or else its whole prompt."""
    return edit.subject if _named(edit) else edit.prompt


class Scope:
    """The prompts the adapter answers: those that name the key of one of `edits` (see the module)."""

    def __init__(self, edits: Sequence):
        self.keys = list(dict.fromkeys(key(e) for e in edits))
        self.by_prompt = sum(not _named(e) for e in edits)  # edits with no usable subject
        self._test = mentions_any(self.keys)

    def covers(self, prompt: str) -> bool:
        """Whether the adapter answers `prompt`."""
        return self._test(prompt)

    def describe(self) -> dict:
        return {"mode": "subject", "keys": len(self.keys), "edits_keyed_by_prompt": self.by_prompt}


def routed(model, scope: Scope | None, items: Sequence[T], fn: Callable[[list[T], bool], Sequence[R]],
           prompt: Callable[[T], str] = lambda x: x) -> list[R]:
    """fn over `items`, one result per item in their order: fn(part, True) with the adapter for
    the items whose `prompt` the scope covers, fn(part, False) with it disabled for the others.

    With no scope (``scope="all"``) it is fn(items, True). A part that is empty is not run, and
    every worker under a launcher splits alike, so collectives inside fn stay matched.
    """
    items = list(items)
    if scope is None:
        return list(fn(items, True))
    inside = [scope.covers(prompt(x)) for x in items]
    out: list = [None] * len(items)
    for on in (True, False):
        idx = [i for i, v in enumerate(inside) if v == on]
        if not idx:
            continue
        with adapter_off(model, not on):
            for i, r in zip(idx, fn([items[i] for i in idx], on)):
                out[i] = r
    return out
