"""CoRSA and its baselines are rows of one table (method.md §4).

Each row says which objectives are trained, how their gradients are combined and whether
SAM perturbs the adapter, and it carries its own defaults for the method options. The
training step reads the row and the options resolved through it and nothing else, so a
baseline is exactly CoRSA with parts switched off, and `corsa-lifelong` is exactly CoRSA
with the lifelong mechanisms switched on.

The method options are the ones whose meaning depends on the row: an option that needs a
part the row does not have (ρ without SAM, β without DPO) is refused, never ignored. The
lifelong mechanisms (replay, eos, preservation, γ) apply to every trained row, so each can be
ablated on any baseline; the scope to every row. The locate-then-edit rows (rome, memit,
alphaedit: corsa.editors) do not train: they take their own options and refuse the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType

from .errors import ConfigError
from .scope import MODES
from .subjects import KEPT


@dataclass(frozen=True)
class Range:
    """The values a number may take: ok(value), and how an error says it ("at least 1")."""

    ok: Callable[[object], bool]
    text: str


POSITIVE = Range(lambda v: v > 0, "positive")
NON_NEGATIVE = Range(lambda v: v >= 0, "non-negative")
AT_LEAST_1 = Range(lambda v: v >= 1, "at least 1")


@dataclass(frozen=True)
class Option:
    """A method option, in one place: the part of a row it needs (None: any row), its default, its
    flag, its help (EditConfig's field and the command line show it), the value it has on a row
    without that part (`off`), the values it may take (`choices`; for a tuple option, its items)
    and the range of a number."""

    needs: str | None
    default: object
    flag: str
    help: str
    off: object = None
    choices: tuple | None = None
    range: Range | None = None


# part a row must have → how to test for it, and how to name it in an error
PARTS = {
    "sam": (lambda m: m.sam, "SAM"),
    "dpo": (lambda m: m.dpo, "DPO"),
    "pcgrad": (lambda m: m.combine == "pcgrad", "PCGrad"),
    "train": (lambda m: m.solver is None, "fine-tuning"),
    "locate": (lambda m: m.solver is not None, "locate-then-edit"),
    "rome": (lambda m: m.solver == "rome", "ROME"),
    "memit": (lambda m: m.solver == "memit", "MEMIT"),
    "alphaedit": (lambda m: m.solver == "alphaedit", "AlphaEdit"),
}

OPTIONS: dict[str, Option] = {
    "rho": Option("sam", 0.05, "--rho", "SAM radius ρ (methods with SAM)", off=0.0, range=NON_NEGATIVE),
    "beta": Option("dpo", 0.1, "--beta", "DPO β (methods with DPO)", range=POSITIVE),
    # the PCGrad variant (pcgrad.COMBINERS); a row without PCGrad combines as its `combine` says
    "combine": Option("pcgrad", "pcgrad", "--combine",
                      "pcgrad (standard) or pcgrad-release (the authors' variant); only for PCGrad methods",
                      choices=("pcgrad", "pcgrad-release")),
    # lifelong editing (docs/results.md, "Edits that last")
    "negatives": Option("dpo", (), "--negatives",
                        "extra rejected answers for DPO: 'online' (the model's current wrong greedy answer, "
                        "refreshed every pass), 'interference' (other edits' y⁺ with the same prompt template), "
                        "'rivals' (the other edits' y⁺ the unedited model finds most plausible for the prompt); "
                        "comma-separated, or 'none'",
                        off=(), choices=("online", "interference", "rivals")),
    "max_negatives": Option("dpo", 4, "--max-negatives", "most extra rejected answers per edit", off=0,
                            range=NON_NEGATIVE),
    "replay": Option("train", "none", "--replay",
                     "earlier updates' edits trained again in this one: none, all, or lost (those whose greedy "
                     "answer no longer holds at the start); they come from the adapter's own record",
                     off="none", choices=("none", "all", "lost")),
    "train_eos": Option("train", True, "--train-eos",
                        "train the end-of-turn token after y⁺ (off: the model learns the fact, not to stop talking)",
                        off=False),
    "preserve": Option("train", 0.0, "--preserve",
                       "κ, weight of KL(unedited ‖ edited) on the unedited model's own answers to anchor prompts",
                       off=0.0, range=NON_NEGATIVE),
    "preserve_first": Option("train", 0.0, "--preserve-first",
                             "with --preserve: w, the weight of the KL at each anchor's first answer token, added "
                             "to the token mean (whether an answer keeps its manner or becomes y⁺ is decided there)",
                             off=0.0, range=NON_NEGATIVE),
    "swap_anchors": Option("train", 0, "--swap-anchors",
                           "with --preserve: per edit, this many extra anchors made of its prompt with another "
                           "edit's subject (the edit must not spill over to other subjects asked the same way)",
                           off=0, range=NON_NEGATIVE),
    "anchor_batch": Option("train", 8, "--anchor-batch", "anchor prompts per optimizer step", off=8,
                           range=AT_LEAST_1),
    "keep_subject": Option("train", 0, "--keep-subject",
                           "with --preserve: per edit, this many questions about its subject that do not ask the "
                           "edited fact ('Who is {subject}?', corsa.subjects.KEPT, never an evaluation probe), "
                           "answered by the unedited model, join the anchors, so the adapter changes the fact and "
                           "not what the subject is",
                           off=0, range=Range(lambda v: 0 <= v <= len(KEPT),
                                              f"from 0 to {len(KEPT)} (the questions corsa.subjects.KEPT holds)")),
    "edit_weight": Option("train", "group", "--edit-weight",
                          "how an edit's losses are weighed in a step: group (the mean over the step's edits) or "
                          "slot (each edit 1/(batch × accumulation), so a step that trains a few edits left over "
                          "pulls them no harder than a full one, and the preservation term keeps its share)",
                          off="group", choices=("group", "slot")),
    "keep_earlier": Option("train", 0, "--keep-earlier",
                           "with --keep-subject: the subject questions of this many earlier edits at rest (a "
                           "sample seeded by the update, of those the update does not train) join the anchors "
                           "too, so later updates keep the manner of the subjects edited before; a fixed number, "
                           "so an update's cost does not grow with the edits held",
                           off=0, range=NON_NEGATIVE),
    "rephrase": Option("train", 0, "--rephrase",
                       "per edit and step, this many other wordings of its prompt (the relation's other templates "
                       "from corsa.rephrase's bank, never an evaluation probe) trained with y⁺ beside it (SFT); "
                       "an edit whose prompt is no known template has none",
                       off=0, range=NON_NEGATIVE),
    "rephrase_dpo": Option("dpo", False, "--rephrase-dpo",
                           "with --rephrase: each drawn wording joins DPO too, y⁺ chosen against y⁻ and the "
                           "edit's negatives after it (the base model's log-probs there as reference), so another "
                           "edit's answer does not win the fact asked in other words (measured: fewer paraphrases reached and "
                           "more answers that are y⁺ alone, docs/results.md)",
                           off=False),
    "scope": Option(None, "all", "--scope",
                    "which prompts the adapter answers: all, or subject (only prompts that name an edited subject; "
                    "the rest get the unedited model, exactly). Saved with the adapter (corsa.scope)",
                    choices=MODES),
    "margin_target": Option("train", 1.0, "--margin-target",
                            "γ, the margin log p(y⁺)−log p(y⁻) above which a greedy-correct edit counts as learnt",
                            off=1.0),
    "retest_every": Option("train", 1, "--retest-every",
                           "with --edit-stop: test the edits at rest (those that held at the last test) after every "
                           "k-th pass only (0: only once every edit a pass trained holds, and after the last pass); "
                           "the edits a pass trained are tested after it, and an update ends only on a test of "
                           "every edit",
                           off=1, range=NON_NEGATIVE),
    # the locate-then-edit rows (corsa.editors): where they edit, how they find the target vector,
    # how they keep other keys, and the adapter that carries their change
    "layers": Option("locate", "auto", "--layers",
                     "the layers whose MLP output projection is edited: auto (the papers' layers as a fraction of "
                     "the depth), a layer (5), a range (4-8) or a list (3,5,7)"),
    "clamp_factor": Option("locate", 1.5, "--clamp-factor",
                           "the target vector's change is at most this times the norm of the vector it changes",
                           range=POSITIVE),
    "kl_weight": Option("locate", 0.0625, "--kl-weight",
                        "weight of the KL term that keeps '{subject} is a' where it was while the target vector "
                        "is found", range=NON_NEGATIVE),
    "target_steps": Option("locate", 20, "--target-steps", "Adam steps to find each edit's target vector",
                           range=AT_LEAST_1),
    "target_lr": Option("locate", 1.0, "--target-lr", "Adam learning rate for the target vectors", range=POSITIVE),
    "stats_corpus": Option("locate", None, "--stats-corpus",
                           "text for the keys' second moment: a .txt (one document per line) or .jsonl (text, "
                           "question or prompt field) file; by default the model's own text (corsa.editors.stats)"),
    "stats_tokens": Option("locate", 20000, "--stats-tokens",
                           "tokens of that corpus used (cached per model, layer and corpus)",
                           range=Range(lambda v: v >= 256, "at least 256")),
    "edit_rank": Option("locate", 128, "--edit-rank",
                        "rank of the LoRA adapter that carries the weight change (exact while the edits per layer "
                        "are at most this)", range=AT_LEAST_1),
    "mom2_weight": Option("memit", 1500.0, "--mom2-weight",
                          "λ, how many times the corpus keys count against the edits' keys (MEMIT)",
                          range=NON_NEGATIVE),
    "nullspace_threshold": Option("alphaedit", 1e-2, "--nullspace-threshold",
                                  "key directions whose second moment is below this fraction of the largest are "
                                  "free to change (AlphaEdit)", range=Range(lambda v: 0 < v < 1, "in (0, 1)")),
    "alphaedit_l2": Option("alphaedit", 0.3, "--alphaedit-l2",
                           "α, the weight of ‖Δ‖² in AlphaEdit's solve, as a fraction of tr C (the mean squared "
                           "norm of a corpus key)", range=POSITIVE),
    "sharpness": Option("sam", "exact", "--sharpness",
                        "the gradient at the SAM point φ+ε: exact (∇L_DPO and ∇L_SFT again, merged again: two "
                        "backwards), reuse (one backward of the probe pass's merge a·L_DPO + b·λL_SFT; exact when "
                        "the row has no DPO) or momentum (ε = ρ·d/‖d‖ along the previous step's direction d, so a "
                        "step is one pass instead of two; Momentum-SAM, Becker et al. 2024); methods with SAM",
                        off="none", choices=("exact", "reuse", "momentum")),
}


@dataclass(frozen=True)
class Method:
    name: str
    dpo: bool          # train the DPO objective (y⁺ chosen, y⁻ rejected) beside SFT on y⁺
    combine: str       # "none" (SFT alone), "sum" or "pcgrad"
    sam: bool          # perturb by ρ·g/‖g‖ and take the gradient there
    description: str
    solver: str | None = None  # a locate-then-edit row: rome, memit or alphaedit (corsa.editors), no training
    defaults: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))  # this row's option defaults

    def __post_init__(self):
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))
        for key in self.defaults:
            if key not in OPTIONS or not self.uses(key):
                raise ValueError(f"method row {self.name}: default for an option it does not take: {key}")

    def uses(self, option: str) -> bool:
        """Whether `option` means something for this row (options outside OPTIONS always do)."""
        spec = OPTIONS.get(option)
        return spec is None or spec.needs is None or PARTS[spec.needs][0](self)

    def default(self, option: str):
        """The value of `option` when the user does not set it: the row's own, else the option's."""
        return self.defaults.get(option, OPTIONS[option].default)

    def value(self, option: str, given=None):
        """`option` as this row trains with it: `off` where the row lacks its part, else `given`, else the default.

        For "combine", a row without PCGrad gives its own combination (none or sum).
        """
        if not self.uses(option):
            return self.combine if option == "combine" else OPTIONS[option].off
        return self.default(option) if given is None else given

    def check(self, option: str, given) -> None:
        """Refuse `given` for an option this row does not take (its `off` value, ρ = 0 and no negatives
        switch nothing on, so they pass everywhere), and a value outside the option's choices."""
        spec = OPTIONS[option]
        if given is not None and not self.uses(option) and given not in (0, ()) and given != spec.off:
            raise self.refuse(option)
        value = self.default(option) if given is None else given
        if spec.choices is not None:
            bad = [v for v in (value if isinstance(value, tuple) else (value,)) if v not in spec.choices]
            if bad:
                raise ConfigError(f"invalid {spec.flag} {','.join(map(str, bad))}: choose "
                                  f"{', '.join(spec.choices[:-1])} or {spec.choices[-1]}")

    def refuse(self, option: str) -> ConfigError:
        """The error for setting an option this row does not take, naming the rows that do."""
        spec = OPTIONS[option]
        part = PARTS[spec.needs][1]
        rows = ", ".join(m.name for m in METHODS.values() if m.uses(option))
        verb = "train" if spec.needs == "dpo" else "use"
        return ConfigError(f"method '{self.name}' does not {verb} {part}, so {spec.flag} has no effect; "
                           f"use a {part} method ({rows}) or drop {spec.flag}")


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("lora", dpo=False, combine="none", sam=False, description="SFT on y⁺ with LoRA"),
    Method("sam", dpo=False, combine="none", sam=True, description="SFT on y⁺ with SAM"),
    Method("dpo", dpo=True, combine="sum", sam=False, description="SFT + DPO, gradients summed"),
    Method("corsa", dpo=True, combine="pcgrad", sam=True, description="SFT + DPO, PCGrad, SAM (CoRSA)"),
    Method("corsa-no-sam", dpo=True, combine="pcgrad", sam=False, description="CoRSA without SAM"),
    Method("corsa-no-pcgrad", dpo=True, combine="sum", sam=True, description="CoRSA with summed gradients"),
    # CoRSA plus the mechanisms of docs/results.md's lifelong study that helped, with the
    # defaults that study chose (see "Edits that last" there). Rival negatives (the other edits'
    # answers that take rephrasings over) add two answer rows per edit; the momentum sharpness
    # step pays for them (one pass a step instead of two). Over all runs the pair leaves
    # generality where it was and cuts the time. Resting edits are tested only once the edits
    # an update trains all hold (retest_every 0): a lifelong update's tests grow with every
    # edit it holds, and a test of every held edit is then paid about once an update (every
    # other pass, retest_every 2, kept the 10 x 10 stream under 2x corsa's time, and a
    # thousand-edit stream would still test its history four or five times an update).
    # Trained on y⁺ alone, the adapter answered every question naming an edited subject in a word
    # (often y⁺: "What is Sven Wollter?" → "Norway"); three questions about each edited subject
    # ("Who is {subject}?", corsa.subjects.KEPT), kept at the unedited model's answers by the KL
    # term (κ 1, 4 anchors a step), keep what the subject is (docs/results.md, "Precise edits").
    Method("corsa-lifelong", dpo=True, combine="pcgrad", sam=True,
           description="CoRSA + replay of every earlier edit (per-edit stopping lets held ones rest), "
                       "a firmer hold (γ = 12), two rival negatives (other edits' answers of the same kind), "
                       "the momentum sharpness step, resting edits tested once the trained ones hold, "
                       "the adapter scoped to prompts that name an edited subject, and three questions about "
                       "each edited subject kept as the unedited model answers them (KL, 4 a step), "
                       "and one other wording of each edit's relation trained a step",
           defaults={"replay": "all", "scope": "subject", "margin_target": 12.0, "negatives": ("rivals",),
                     "max_negatives": 2, "sharpness": "momentum", "retest_every": 0,
                     "preserve": 1.0, "keep_subject": 3, "anchor_batch": 4, "rephrase": 1}),
    # locate-then-edit methods (corsa.editors): a closed-form change of MLP output projections
    Method("rome", dpo=False, combine="none", sam=False, solver="rome",
           description="ROME (Meng et al. 2022): a rank-one change of one layer's MLP per edit",
           defaults={"clamp_factor": 4.0}),
    Method("memit", dpo=False, combine="none", sam=False, solver="memit",
           description="MEMIT (Meng et al. 2023): the edits of an update spread over several layers' MLPs"),
    Method("alphaedit", dpo=False, combine="none", sam=False, solver="alphaedit",
           description="AlphaEdit (Fang et al. 2025): MEMIT projected onto the null space of preserved and earlier keys"),
]}


def describe_default(option: str) -> str:
    """`option`'s default as help text: the option's own, then every row whose default differs."""
    base = OPTIONS[option].default
    shown = lambda v: ",".join(v) or "none" if isinstance(v, tuple) else str(v)  # noqa: E731
    own = [f"{m.name}: {shown(m.default(option))}" for m in METHODS.values()
           if m.uses(option) and m.default(option) != base]
    return "; ".join([shown(base), *own])


def get_method(name: str) -> Method:
    """The method called `name`; an unknown name is an error listing the valid ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method '{name}'; choose one of: {', '.join(METHODS)}") from None
