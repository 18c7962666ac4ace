"""Every hyperparameter of an edit run (method.md §4), and the settings of its evaluation (§5).

This dataclass is the single source of truth for defaults: the CLI, the Python API and the
run record all go through it. Options that a method does not use are refused rather than
ignored, so nothing silently changes the objective. A method option left at None takes the
method row's default (:mod:`corsa.methods`).

The defaults are sized for the bundled 135M model and for 4 to 1,000 edits: lr 1e-3, batch 8
without accumulation, and per-edit stopping within a budget of 20 passes, so a small update
gets the steps it needs and a large one stops when its edits hold. The authors' release
(lr 2e-4, batch 8 × 4, 10 fixed epochs, for 8B models) is the preset ``release``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from .errors import ConfigError
from .methods import AT_LEAST_1, NON_NEGATIVE, OPTIONS, POSITIVE, Method, Range, get_method

DEFAULT_MODEL = "smollm2-135m"  # the model every command and the Python API use when none is named
NEW_TOKENS = 16  # tokens generated per answer, in training's greedy checks and in evaluation
ASK_NEW_TOKENS = 32  # tokens generated per answer by `corsa ask` / corsa.ask: a reply, not a checked answer
TEMPLATES = ("auto", "chat", "raw")  # prompt formats (corsa.prompts.PromptFormat)
MAX_LORA_R = 65536  # far above any useful rank; sizes beyond are refused before anything is allocated
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# the settings of training, which the locate-then-edit rows (no training) refuse
TRAINING_FIELDS = frozenset({"lora_r", "lora_alpha", "lora_dropout", "target_modules", "lr", "weight_decay",
                             "warmup_steps", "batch_size", "grad_accum", "epochs", "max_steps", "max_grad_norm",
                             "sft_weight", "reference", "replay_budget", "anchors", "edit_stop",
                             "early_stop"})


NO_CAP = Range(lambda v: v >= 0, "non-negative (0: no cap)")


def option(name: str):
    """A method option's field: None (the row's default, corsa.methods), its help and range from its row of OPTIONS."""
    return field(default=None, metadata={"help": OPTIONS[name].help})


def setting(default, help: str, range: Range | None = None, **kwargs):
    """A plain option's field: its default, help and range together."""
    return field(default=default, metadata={"help": help, "range": range}, **kwargs)


@dataclass
class EditConfig:
    """Every option of an update: a plain option's default, help and range on its field (`setting`),
    a method option's in its row of corsa.methods.OPTIONS (`option`)."""

    method: str = field(default="corsa", metadata={
        "help": "lora, sam, dpo, corsa, corsa-no-sam, corsa-no-pcgrad, corsa-lifelong, rome, memit, alphaedit; `corsa edit --adapter` "
                "without it continues with the method the adapter was trained with"})
    # LoRA (the release: r=32, α=64, no dropout, all attention and MLP projections)
    lora_r: int = setting(32, "LoRA rank r", Range(lambda v: 1 <= v <= MAX_LORA_R, f"from 1 to {MAX_LORA_R:,}"))
    lora_alpha: float = setting(64.0, "LoRA scale α (the update is α/r · BA)", POSITIVE)
    lora_dropout: float = setting(0.0, "dropout on the LoRA input", Range(lambda v: 0 <= v < 1, "in [0, 1)"))
    target_modules: tuple[str, ...] = field(default=DEFAULT_TARGET_MODULES,
                                            metadata={"help": "module names that get LoRA, or 'all-linear'"})
    # optimisation
    lr: float = setting(1e-3, "AdamW learning rate", POSITIVE)
    weight_decay: float = setting(0.0, "AdamW weight decay", NON_NEGATIVE)
    # 2: step 1 at half the rate (Adam's first step is a full-size sign step: the warm-up softens it), step 2 at
    # the full rate; each step moves the adapter (engine.lr_factor)
    warmup_steps: int = setting(2, "linear warm-up steps (step k of W at lr·k/W), then linear decay", NON_NEGATIVE)
    batch_size: int = setting(8, "edits per micro-batch", AT_LEAST_1)
    grad_accum: int = setting(1, "micro-batches per optimizer step", AT_LEAST_1)
    epochs: int = setting(20, "passes over the update's edits (with --edit-stop: the most passes, a budget)", AT_LEAST_1)
    max_steps: int = setting(0, "stop after this many optimizer steps (0: no cap)",
                             NO_CAP)
    max_grad_norm: float = setting(1.0, "clip the combined gradient to this norm (0: off)",
                                   Range(lambda v: v >= 0, "non-negative (0 turns clipping off)"))
    seed: int = setting(42, "seed for LoRA init, batch order and PCGrad order",
                        Range(lambda v: isinstance(v, int) and 0 <= v < 2**32, "a whole number from 0 to 2³² − 1"))
    # the CoRSA terms; None means "the method's default", a value for an unused term is an error
    rho: float | None = option("rho")
    beta: float | None = option("beta")
    sft_weight: float = setting(1.0, "λ, the weight of the SFT term", NON_NEGATIVE)
    combine: str | None = option("combine")
    reference: str = field(default="base", metadata={
        "help": "DPO reference: 'base' (adapter off) or 'previous' (the model after the last update)"})
    # lifelong editing (docs/results.md, "Edits that last"); None means "the method's default"
    negatives: tuple[str, ...] | None = option("negatives")
    max_negatives: int | None = option("max_negatives")
    replay: str | None = option("replay")
    replay_budget: int = setting(0, "most earlier edits replayed per update, lost ones first (0: no cap)", NO_CAP)
    train_eos: bool | None = option("train_eos")
    preserve: float | None = option("preserve")
    preserve_first: float | None = option("preserve_first")
    anchors: str | None = field(default=None, metadata={
        "help": "file of anchor prompts for --preserve, one per line (default: corsa's bundled generic set)"})
    anchor_batch: int | None = option("anchor_batch")
    swap_anchors: int | None = option("swap_anchors")
    keep_subject: int | None = option("keep_subject")
    keep_earlier: int | None = option("keep_earlier")
    edit_weight: str | None = option("edit_weight")
    rephrase: int | None = option("rephrase")
    rephrase_dpo: bool | None = option("rephrase_dpo")
    rephrase_templates: str | None = field(default=None, metadata={
        "help": "relation templates for --rephrase, a JSON file {\"relations\": [[template, …], …]} with {} "
                "for the subject (python -m corsa.rephrase builds one; default: corsa's bundled bank, from "
                "CounterFact's train split)"})
    scope: str | None = option("scope")
    sharpness: str | None = option("sharpness")
    # prompts
    template: str = field(default="auto", metadata={"help": "chat, raw, or auto (chat when the tokenizer has a template)"})
    # stopping (method.md §4: documented alternatives to a fixed number of epochs)
    edit_stop: bool | None = field(default=None, metadata={
        "help": "per-edit stopping: an edit whose margin exceeds γ and whose greedy answer is y⁺ leaves the "
                "batches until it is lost again; the update ends when every edit holds (default: on, "
                "unless --early-stop)"})
    early_stop: bool = field(default=False, metadata={"help": "stop once every edit's margin exceeds γ and its greedy answer is y⁺"})
    margin_target: float | None = option("margin_target")
    retest_every: int | None = option("retest_every")
    # locate-then-edit methods (rome, memit, alphaedit: corsa.editors); None means "the method's default"
    layers: str | None = option("layers")
    clamp_factor: float | None = option("clamp_factor")
    kl_weight: float | None = option("kl_weight")
    target_steps: int | None = option("target_steps")
    target_lr: float | None = option("target_lr")
    stats_corpus: str | None = option("stats_corpus")
    stats_tokens: int | None = option("stats_tokens")
    edit_rank: int | None = option("edit_rank")
    mom2_weight: float | None = option("mom2_weight")
    nullspace_threshold: float | None = option("nullspace_threshold")
    alphaedit_l2: float | None = option("alphaedit_l2")
    max_new_tokens: int = setting(NEW_TOKENS, "tokens generated for y⁻ and for greedy checks", AT_LEAST_1)

    def __post_init__(self):
        if isinstance(self.target_modules, str):
            self.target_modules = tuple(m.strip() for m in self.target_modules.split(",") if m.strip())
        self.target_modules = tuple(self.target_modules)
        if isinstance(self.negatives, str):
            self.negatives = tuple(n.strip() for n in self.negatives.split(",") if n.strip())
        if self.negatives is not None:
            self.negatives = () if tuple(self.negatives) in ((), ("none",)) else tuple(self.negatives)
        for f in fields(self):  # a whole-number option given 2.5 or "8" from Python is an error, not a traceback
            value = getattr(self, f.name)
            if f.type in ("int", "int | None") and value is not None and (isinstance(value, bool)
                                                                          or not isinstance(value, int)):
                raise ConfigError(f"invalid {f.name}={value!r}: it must be a whole number")
            if f.type in ("float", "float | None") and value is not None and (isinstance(value, bool) or
                                                                              not isinstance(value, (int, float))):
                raise ConfigError(f"invalid {f.name}={value!r}: it must be a number")
        if not isinstance(self.method, str):
            raise ConfigError(f"invalid method={self.method!r}: give a method's name")
        m = get_method(self.method)
        for name in OPTIONS:  # the row says which options it takes and what values they may have
            m.check(name, getattr(self, name))
        if m.solver is not None:  # ROME, MEMIT, AlphaEdit do not train: a training setting would be ignored
            given = [f.name for f in fields(self) if f.name in TRAINING_FIELDS and getattr(self, f.name) != f.default
                     and not (f.name == "target_modules" and tuple(getattr(self, f.name)) == tuple(f.default))]
            if given:
                flags = ", ".join("--" + g.replace("_", "-") for g in given)
                raise ConfigError(f"method '{self.method}' does not train, so {flags} has no effect; its options are "
                                  f"--layers, --clamp-factor, --target-steps … (corsa edit --help), or use a "
                                  f"trained method (lora, corsa, …)")
        if self.value("negatives") and self.reference != "base":
            raise ConfigError("--negatives needs --reference base: negatives are scored by the base model (an "
                              "online one appears during training, when the model of the last update is gone)")
        # what the user gave, not the row's defaults: corsa-lifelong --preserve 0 switches the term off whole
        if not self.value("preserve") and (self.swap_anchors or self.keep_subject or self.keep_earlier
                                           or self.preserve_first or self.anchors is not None):
            raise ConfigError("--swap-anchors, --keep-subject, --keep-earlier, --preserve-first and --anchors shape "
                              "the preservation term, which is off; set --preserve κ > 0 or drop them")
        if self.value("keep_earlier") and not self.value("keep_subject"):
            raise ConfigError("--keep-earlier keeps the subject questions of earlier edits, and --keep-subject "
                              "(the questions per edit) is 0; set --keep-subject k or drop it")
        if self.value("keep_earlier") and self.value("replay") != "all":
            raise ConfigError("--keep-earlier keeps the subject questions of earlier edits at rest, which only "
                              "--replay all tests again (an earlier edit the term weakens is then trained again); "
                              "set --replay all or drop it")
        if self.rephrase_templates is not None and not self.value("rephrase"):
            raise ConfigError("--rephrase-templates gives the wordings of --rephrase, which is off; set --rephrase k "
                              "or drop it")
        if self.value("rephrase_dpo") and not self.value("rephrase"):
            raise ConfigError("--rephrase-dpo trains the wordings of --rephrase with DPO, and --rephrase is off; "
                              "set --rephrase k or drop it")
        if self.value("rephrase_dpo") and self.reference != "base":
            raise ConfigError("--rephrase-dpo needs --reference base: a wording is drawn during training, when the "
                              "model of the last update is gone")
        if self.replay_budget and self.value("replay") == "none":
            raise ConfigError("--replay-budget limits replay, which is off; set --replay all or lost, or drop it")
        if self.edit_stop is None:
            self.edit_stop = not self.early_stop
        if self.edit_stop and self.early_stop:
            raise ConfigError("--early-stop and --edit-stop are two stopping rules; choose one "
                              "(--no-edit-stop --early-stop for the whole-update rule)")
        # a row's default spacing (corsa-lifelong's) simply has nothing to space without per-edit stopping
        if not self.edit_stop and self.retest_every is not None and self.value("retest_every") != 1:
            raise ConfigError("--retest-every spaces the tests of per-edit stopping, which is off; "
                              "drop it or use --edit-stop")
        if self.sft_weight == 0 and not m.dpo and m.solver is None and not self.value("preserve"):
            raise ConfigError(f"--sft-weight 0 turns off the only term {self.method} trains (SFT), so training would "
                              f"change nothing; give a positive weight, or use a method with DPO (corsa)")
        for f in fields(self):  # the range of a plain option is on its field, of a method option in its row
            need = f.metadata.get("range") or (OPTIONS[f.name].range if f.name in OPTIONS else None)
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"invalid {f.name}={value!r}: it must be a finite number")
            if need is not None and value is not None and not need.ok(value):
                raise ConfigError(f"invalid {f.name}={value!r}: it must be {need.text}")
        if self.reference not in ("base", "previous"):
            raise ConfigError(f"invalid reference={self.reference!r}: choose 'base' or 'previous'")
        if self.template not in TEMPLATES:
            raise ConfigError(f"invalid template={self.template!r}: choose {', '.join(TEMPLATES)}")
        if not self.target_modules:
            raise ConfigError("target_modules is empty: name the modules that get LoRA, or 'all-linear'")

    # --- resolved values -------------------------------------------------------------------
    @property
    def spec(self) -> Method:
        return get_method(self.method)

    def value(self, name: str):
        """A method option as used (:meth:`Method.value`): off on a row without its part, else given, else the row's."""
        return self.spec.value(name, getattr(self, name))

    @property
    def eval_batch_size(self) -> int:
        """Edits per batch of no-grad scoring (reference, hold tests, rivals): the training batch, at least 16."""
        return max(self.batch_size, 16)

    @property
    def sam_rho(self) -> float:
        """ρ actually used: 0 for methods without SAM."""
        return self.value("rho")

    @property
    def dpo_beta(self) -> float | None:
        """β actually used: None for methods without DPO."""
        return self.value("beta")

    @property
    def combiner(self) -> str:
        """The gradient combination actually used: none, sum, pcgrad or pcgrad-release."""
        return self.value("combine")

    def resolved(self) -> dict:
        """Every field plus the resolved method terms, as written into the run record."""
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        if d["negatives"] is not None:
            d["negatives"] = list(d["negatives"])
        d["resolved"] = {"dpo": self.spec.dpo, "sam": self.spec.sam, "solver": self.spec.solver,
                         **{name: list(v) if isinstance(v, tuple) else v
                            for name in OPTIONS for v in [self.value(name)]}}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EditConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"resolved"})
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def preset(cls, name: str, **overrides) -> "EditConfig":
        """The settings of a named preset (PRESETS), with `overrides` on top."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


# Options added after runs were saved: the value every run saved before them trained with, so
# that a rerun of such a run compares what really differs (config.upgraded).
ADDED_OPTIONS = {"keep_subject": 0, "anchor_batch": 8, "rephrase": 0, "rephrase_dpo": False, "keep_earlier": 0,
                 "preserve_first": 0.0, "edit_weight": "group"}


def upgraded(record: dict) -> dict:
    """A saved configuration (EditConfig.resolved()) as today's would read for the same training.

    An option added since it was written (ADDED_OPTIONS) gets, under "resolved", the value the
    run trained with: its top-level value where the record has one (anchor_batch was a plain
    setting, 8 by default), else the old behaviour; at the top level it reads "not given" (None)
    unless the run gave another value. A record without "resolved" is returned as it is.
    """
    if not isinstance(record, dict) or not isinstance(record.get("resolved"), dict):
        return record
    out = {**record, "resolved": dict(record["resolved"])}
    for name, old in ADDED_OPTIONS.items():
        if name not in out["resolved"]:
            was = out.get(name)
            out["resolved"][name] = old if was is None else was
            out[name] = None if was in (None, old) else was
    return out


# Named sets of options. `release` is the authors' release (method.md §4), for reproducing the
# paper at 8B scale on thousands of edits; on a 135M model with tens of edits it takes a handful
# of steps and edits nothing.
PRESETS: dict[str, dict] = {
    "release": {"lr": 2e-4, "warmup_steps": 5, "batch_size": 8, "grad_accum": 4, "epochs": 10,
                "edit_stop": False},
}



@dataclass(frozen=True)
class EvalSettings:
    """How answers are produced; every field but `batch_size` changes the numbers."""

    max_new_tokens: int = field(default=NEW_TOKENS, metadata={
        "flag": "--max-new-tokens", "help": "tokens generated per answer"})
    sample: int = field(default=0, metadata={
        "flag": "--sample", "help": "draw N sampled answers per prompt instead of the greedy one (0: greedy)"})
    temperature: float = field(default=0.7, metadata={
        "flag": "--temperature", "help": "sampling temperature (the release samples at 0.7)"})
    seed: int = field(default=0, metadata={"flag": "--sample-seed", "help": "seed for sampling"})
    batch_size: int = field(default=16, metadata={
        "flag": "--eval-batch-size", "help": "prompts per generation / scoring batch"})

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (f.type == "int" and
                                                                                  not isinstance(value, int)):
                raise ConfigError(f"{f.metadata['flag']} must be a {'whole ' if f.type == 'int' else ''}number, "
                                  f"not {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.metadata['flag']} must be a finite number, not {value!r}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"--sample-seed must be a whole number from 0 to 2³² − 1, not {self.seed}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}")
        if self.sample < 0:
            raise ConfigError(f"--sample must be 0 (greedy) or a number of samples, not {self.sample}")
        if self.sample and not self.temperature > 0:
            raise ConfigError(f"--temperature must be positive when sampling, not {self.temperature}")
        if self.batch_size < 1:
            raise ConfigError(f"the evaluation batch size must be at least 1, not {self.batch_size}")

    def protocol(self, template: str) -> dict:
        """What every metric key's prefix means for this run."""
        decoding = (f"sampled: {self.sample} answers per prompt at temperature {self.temperature}, "
                    f"seed {self.seed}" if self.sample else "greedy")
        return {
            "generated": {"decoding": decoding, "max_new_tokens": self.max_new_tokens, "template": template,
                          "match": "whole words, case- and whitespace-normalised (corsa.metrics.contains)",
                          "locality": "greedy, compared with the unedited model's greedy answer"},
            "teacher_forced": {"score": "log-probability summed over answer tokens", "template": template,
                               "mmlu": "zero-shot raw prompt, letter with the highest log-probability"},
        }

    def identity(self) -> dict:
        """The settings two evaluations must share to be compared (not the batch size)."""
        d = asdict(self)
        d.pop("batch_size")
        if not self.sample:
            d.pop("temperature"), d.pop("seed")
        return d
