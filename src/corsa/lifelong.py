"""What an update trains besides its own edits: earlier edits replayed, negatives, anchors.

An adapter lives through many updates (docs/method.md §5). Each update trains its new edits
and, depending on the method's row, also

- **replayed edits**: earlier edits the adapter holds, trained again (EditConfig.replay and
  replay_budget; lost ones first);
- **negatives**: more rejected answers per edit than y⁻ (corsa.negatives: other edits' y⁺ that
  share its template, or that the unedited model finds plausible for its prompt);
- **rephrasings**: other wordings of each edit's prompt, trained with its y⁺ (EditConfig.rephrase,
  corsa.rephrase);
- **anchors**: prompts unrelated to the edits, and questions about each edit's subject that do
  not ask the edited fact (keep_subject), whose unedited answers the preservation term keeps
  (corsa.preserve).

`Lifelong` holds what these need across updates (one per Editor, tied to its model): the base
model's scores (it never changes), which edits held at the last update's final test (the
adapter has not moved since), and the unedited answers of the anchor prompts. `plan` turns one
update's new edits into everything the training step gets.

A new mechanism of this kind keeps what it needs across updates on `Lifelong`, adds what one
update trains to `Plan` (made in `plan`), and is read from there by `Editor` (api.py) when it
calls the training loop (corsa.engine.train_update).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field

from . import negatives, preserve, rephrase
from .config import EditConfig
from .engine import holding
from .metrics import normalise
from .prompts import Encoded, PromptFormat, encode_edits
from .records import Edit
from .scope import Scope
from .scoring import BaseScores


def held_key(edit: Edit) -> tuple:
    """What the hold test of an edit depends on besides the adapter: its prompt and both answers."""
    return edit.prompt, edit.target_new, edit.target_old


def not_edited_again(history: list[Edit], edits: list[Edit]) -> list[Edit]:
    """The earlier edits whose prompt `edits` does not edit again (a prompt keeps only its newest edit)."""
    new = {normalise(e.prompt) for e in edits}
    return [e for e in history if normalise(e.prompt) not in new]


@dataclass
class Plan:
    """One update's training material: the new edits first, then the replayed ones."""

    edits: list[Edit]  # the update's own edits
    replay: list[Edit]  # earlier edits trained again
    encoded: list[Encoded]  # of edits + replay, with their extra negatives
    anchors: preserve.Anchors | None  # the preservation term's anchors (None with the term off)
    replay_held: list[bool] | None  # which replayed edits hold now (None without per-edit stopping)
    held_before: dict = field(default_factory=dict, repr=False)  # Lifelong's last test, should the update fail

    @property
    def pool(self) -> list[Edit]:
        return self.edits + self.replay


class Lifelong:
    """The state an Editor keeps across updates for what an update trains besides its own edits."""

    def __init__(self, model, fmt: PromptFormat, config: EditConfig, max_length: int | None):
        self.model, self.fmt, self.config, self.max_length = model, fmt, config, max_length
        self.base_scores = BaseScores()  # the base model's DPO reference scores (it never changes)
        self._held: dict[tuple, bool] = {}  # which edits held at the last final test
        self._anchors: dict | None = None  # anchor prompt → (prompt ids, the unedited model's answer ids)
        self._generic: list[str] = []
        self._bank: rephrase.Bank | None = None  # the relation templates (EditConfig.rephrase), read once

    def plan(self, history: list[Edit], edits: list[Edit], index: int, scoped: bool = False) -> Plan:
        """Everything one update trains: its edits, the replayed ones, their negatives, the anchors.

        After it the adapter moves, so what held at the last test is forgotten (see `tested`).
        """
        cfg = self.config
        replay = self.replay_set(history, edits, index)
        pool = edits + replay
        encoded = encode_edits(self.fmt, pool, self.max_length, need_rejected=True, eos=cfg.value("train_eos"))
        replay_held = self.replay_held(replay, encoded[len(edits):])
        # what trains from the start: the new edits and, with per-edit stopping, the replayed ones
        # that do not hold; only these get negatives and anchors, so an update's cost follows what it
        # trains, not every edit the adapter holds (a resting edit lost mid-update trains on y⁻ alone)
        trains = (list(range(len(pool))) if replay_held is None else
                  list(range(len(edits))) + [len(edits) + j for j, ok in enumerate(replay_held) if not ok])
        self.add_negatives([encoded[i] for i in trains], [pool[i] for i in trains], history + edits)
        # every edit of the pool: a resting edit lost mid-update trains them too, and they cost only tokenising
        self.add_rephrasings(encoded, pool, history + edits)
        anchors = (self.anchors(history, [pool[i] for i in trains], index, scoped,
                                earlier=self.earlier_subjects(replay, [pool[i] for i in trains], index))
                   if cfg.value("preserve") > 0 else None)
        plan = Plan(list(edits), replay, encoded, anchors, replay_held, self._held)
        self._held = {}  # from here on the adapter moves
        return plan

    def replay_held(self, replay: list[Edit], encoded: list[Encoded]) -> list[bool] | None:
        """Whether each replayed edit holds now (with per-edit stopping; None without it, or without replay):
        the last update's final test where it covers them all (the adapter has not moved since), else a test now."""
        if not replay or not self.config.edit_stop:
            return None
        known = self.known_held(replay)
        if known is not None:
            return known
        return holding(self.model, self.fmt, encoded, self.config, self.config.eval_batch_size)

    def undo(self, plan: Plan) -> None:
        """The update of `plan` failed and the adapter is back where it was: what held then holds again."""
        self._held = plan.held_before

    def tested(self, pool: list[Edit], held: list[bool] | None) -> None:
        """Remember which of `pool` held at the update's final test (UpdateResult.held)."""
        if held is not None:
            self._held = {held_key(e): h for e, h in zip(pool, held)}

    def last_test(self) -> dict | None:
        """What the last final test found, as run.json keeps it ("held": by held_key, since ids may repeat,
        with the γ and train_eos it tested with); None when nothing was tested since the adapter moved."""
        if not self._held:
            return None
        return {"margin_target": self.config.value("margin_target"), "train_eos": self.config.value("train_eos"),
                "held": [list(k) for k, ok in self._held.items() if ok],
                "lost": [list(k) for k, ok in self._held.items() if not ok]}

    def restore(self, saved: dict) -> None:
        """A saved adapter's last test (`last_test`, read back from run.json): trusted where it tested as this
        configuration tests, else left out (the replayed edits are then tested before the first step)."""
        if (saved["margin_target"], saved["train_eos"]) == (self.config.value("margin_target"),
                                                            self.config.value("train_eos")):
            self._held = {**{tuple(k): True for k in saved["held"]}, **{tuple(k): False for k in saved["lost"]}}

    def replay_set(self, history: list[Edit], edits: list[Edit], index: int = 0) -> list[Edit]:
        """The earlier edits this update trains again (EditConfig.replay and replay_budget).

        They come from the adapter's own record (`history`, saved with the adapter), so
        continuing a saved adapter replays without the old files. An earlier edit whose prompt
        this update edits again is superseded, never replayed. With a budget, lost edits (whose
        greedy answer no longer holds) come first and the rest are drawn with the seed.
        """
        mode, budget = self.config.value("replay"), self.config.replay_budget
        earlier = not_edited_again(history, edits)
        if mode == "none" or not earlier:
            return []
        if mode == "all" and not (budget and len(earlier) > budget):
            return earlier
        held = self.known_held(earlier)
        if held is None:
            enc = encode_edits(self.fmt, earlier, None, need_rejected=True, eos=self.config.value("train_eos"))
            held = holding(self.model, self.fmt, enc, self.config, self.config.eval_batch_size)
            self._held.update((held_key(e), h) for e, h in zip(earlier, held))  # the adapter has not moved
        lost = [e for e, ok in zip(earlier, held) if not ok]
        rest = [] if mode == "lost" else [e for e, ok in zip(earlier, held) if ok]
        random.Random(self.config.seed + 1000 * index).shuffle(rest)
        chosen = lost + rest
        return chosen[:budget] if budget else chosen

    def known_held(self, edits: list[Edit]) -> list[bool] | None:
        """Whether each of `edits` holds, from the last update's final test; None if any is unknown."""
        held = [self._held.get(held_key(e)) for e in edits]
        return None if any(h is None for h in held) else held

    def add_negatives(self, encoded: list[Encoded], pool: list[Edit], seen: list[Edit]) -> None:
        """Each edit's negatives beyond y⁻ (EditConfig.negatives) as answer ids in `enc.extra`.

        `seen`: every edit the adapter will hold after this update, whose y⁺ can be a rival.
        """
        cfg, eos = self.config, self.config.value("train_eos")
        kinds = cfg.value("negatives")  # () on a row without DPO
        if not {"interference", "rivals"} & set(kinds):
            return
        room = max(0, cfg.value("max_negatives") - ("online" in kinds))  # leave one for online
        found = negatives.interference(pool, seen, room) if "interference" in kinds else [[] for _ in pool]
        if "rivals" in kinds and room and len({normalise(e.target_new) for e in seen}) > 1:  # else no rival to find
            found = negatives.merge(found, negatives.rivals(pool, seen, self.plausibility(encoded, eos), room), room)
        for enc, answers in zip(encoded, found):
            enc.extra = [self.fmt.answer_ids(a, eos) for a in answers]

    def add_rephrasings(self, encoded: list[Encoded], pool: list[Edit], seen: list[Edit]) -> None:
        """Each edit's other wordings of its prompt (EditConfig.rephrase, corsa.rephrase) as prompt ids in
        `enc.rephrased`; a wording that an evaluation probe of any edit in `seen` is, or ends with, is left out."""
        if not self.config.value("rephrase"):
            return
        if self._bank is None:
            self._bank = rephrase.Bank.read(self.config.rephrase_templates)
        tails = rephrase.probe_tails(preserve.probe_prompts(seen))  # once: every edit's wordings are checked
        for enc, e in zip(encoded, pool):
            wordings = self._bank.unprobed(e.prompt, e.subject, tails)
            enc.rephrased = [ids for ids in map(self.fmt.prompt_ids, wordings)
                             if self.max_length is None or len(ids) + len(enc.chosen) <= self.max_length]

    def plausibility(self, encoded: list[Encoded], eos: bool):
        """plausibility(i, answer) for negatives.rivals: log p_base of `answer`'s first token after
        encoded[i]'s prompt (None outside the base model's most likely tokens), kept across updates."""
        nexts = self.base_scores.next_token(self.model, self.fmt, [enc.prompt for enc in encoded],
                                            self.config.eval_batch_size)
        first = functools.lru_cache(maxsize=None)(lambda answer: self.fmt.answer_ids(answer, eos)[0])
        return lambda i, answer: nexts[i].get(first(answer))

    def earlier_subjects(self, replay: list[Edit], trains: list[Edit], index: int) -> list[Edit]:
        """The replayed edits whose subject questions this update keeps although they rest
        (EditConfig.keep_earlier): the first N, in an order seeded by the update, of the replayed
        edits that do not train, with a subject that no edit the update trains has. Only replayed
        edits: the update ends on a test of them, so one that the term weakens is trained again."""
        n = self.config.value("keep_earlier")  # config refuses it without keep_subject
        if not n:
            return []
        subject = lambda e: normalise(e.subject or "")  # noqa: E731 ("" for none, or a blank one)
        taken = {subject(e) for e in trains}
        training = {held_key(e) for e in trains}
        order = list(replay)  # the order depends on the update alone, not on which edits hold now
        random.Random(f"keep-earlier {self.config.seed} {index}").shuffle(order)
        out = []
        for e in order:
            if len(out) == n:
                break
            if held_key(e) in training or not subject(e) or subject(e) in taken:
                continue
            taken.add(subject(e))
            out.append(e)
        return out

    def anchors(self, history: list[Edit], edits: list[Edit], index: int = 0,
                scoped: bool = False, earlier: list[Edit] = ()) -> preserve.Anchors:
        """The preservation term's anchors (corsa.preserve), without any evaluation probe of `edits`.

        Generic prompts, prompts with another edit's subject (swap_anchors) and questions about
        each edit's own subject (keep_subject), and about the subjects of `earlier` edits at rest
        (keep_earlier). With `scoped` (the subject scope) an anchor that
        names no edited subject is dropped: the unedited model answers it, exactly, whatever the
        adapter. The unedited model's answers are computed once per anchor prompt and kept for
        later updates.
        """
        if self._anchors is None:
            self._anchors = {}
            self._generic = preserve.read_anchors(self.config.anchors)
        k = self.config.value("swap_anchors")
        seed = self.config.seed + 1000 * index
        swapped = preserve.swapped_prompts(edits, history + list(edits), k, seed) if k else []
        asked = preserve.subject_prompts(list(edits) + list(earlier), self.config.value("keep_subject"))
        prompts = preserve.without_probes(list(dict.fromkeys(self._generic + swapped + asked)), list(edits) + history)
        if scoped:
            prompts = list(filter(Scope(history + list(edits)).covers, prompts))
        todo = [p for p in prompts if p not in self._anchors]
        if todo:
            made = preserve.prepare(self.model, self.fmt, todo)
            self._anchors.update(dict.fromkeys(todo))  # None: answered with nothing, and not asked again
            self._anchors.update(zip(made.prompts, made.pairs))
        kept = [p for p in prompts if self._anchors[p] is not None]  # an anchor answered with nothing is left out
        return preserve.Anchors(kept, [self._anchors[p] for p in kept])
