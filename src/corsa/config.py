"""Every hyperparameter of an edit run, with the release's defaults (method.md §4).

This dataclass is the single source of truth for defaults: the CLI, the Python API and the
run record all go through it. Options that a method does not use are refused rather than
ignored, so nothing silently changes the objective.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from .errors import ConfigError
from .methods import Method, get_method

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class EditConfig:
    method: str = field(default="corsa", metadata={"help": "lora, sam, dpo, corsa, corsa-no-sam, corsa-no-pcgrad"})
    # LoRA (the release: r=32, α=64, no dropout, all attention and MLP projections)
    lora_r: int = field(default=32, metadata={"help": "LoRA rank r"})
    lora_alpha: float = field(default=64.0, metadata={"help": "LoRA scale α (the update is α/r · BA)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input"})
    target_modules: tuple[str, ...] = field(default=DEFAULT_TARGET_MODULES,
                                            metadata={"help": "module names that get LoRA, or 'all-linear'"})
    # optimisation
    lr: float = field(default=2e-4, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=5, metadata={"help": "linear warm-up steps, then linear decay to 0"})
    batch_size: int = field(default=8, metadata={"help": "edits per micro-batch"})
    grad_accum: int = field(default=4, metadata={"help": "micro-batches per optimizer step"})
    epochs: int = field(default=10, metadata={"help": "passes over the update's edits"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "clip the combined gradient to this norm (0: off)"})
    seed: int = field(default=42, metadata={"help": "seed for LoRA init, batch order and PCGrad order"})
    # the CoRSA terms; None means "the method's default", a value for an unused term is an error
    rho: float | None = field(default=None, metadata={"help": "SAM radius ρ (methods with SAM; default 0.05)"})
    beta: float | None = field(default=None, metadata={"help": "DPO β (methods with DPO; default 0.1)"})
    sft_weight: float = field(default=1.0, metadata={"help": "λ, the weight of the SFT term"})
    combine: str | None = field(default=None, metadata={
        "help": "pcgrad (standard) or pcgrad-release (the authors' variant); only for PCGrad methods"})
    reference: str = field(default="base", metadata={
        "help": "DPO reference: 'base' (adapter off) or 'previous' (the model after the last update)"})
    # prompts
    template: str = field(default="auto", metadata={"help": "chat, raw, or auto (chat when the tokenizer has a template)"})
    # early stopping (method.md §4: a documented alternative to a fixed number of epochs)
    early_stop: bool = field(default=False, metadata={"help": "stop once every edit's margin exceeds γ and its greedy answer is y⁺"})
    margin_target: float = field(default=1.0, metadata={"help": "γ, the margin log p(y⁺)−log p(y⁻) that counts as learnt"})
    max_new_tokens: int = field(default=16, metadata={"help": "tokens generated for y⁻ and for greedy checks"})

    def __post_init__(self):
        if isinstance(self.target_modules, str):
            self.target_modules = tuple(m.strip() for m in self.target_modules.split(",") if m.strip())
        self.target_modules = tuple(self.target_modules)
        m = get_method(self.method)
        if not m.sam and self.rho is not None and self.rho != 0:
            raise ConfigError(f"method '{m.name}' does not use SAM, so --rho has no effect; "
                              f"use a SAM method (sam, corsa, corsa-no-pcgrad) or drop --rho")
        if not m.dpo and self.beta is not None:
            raise ConfigError(f"method '{m.name}' does not train DPO, so --beta has no effect; "
                              f"use a DPO method (dpo, corsa, corsa-no-sam, corsa-no-pcgrad) or drop --beta")
        if self.combine is not None and m.combine != "pcgrad":
            raise ConfigError(f"--combine applies to PCGrad methods (corsa, corsa-no-sam), not '{m.name}'")
        if self.combine is not None and self.combine not in ("pcgrad", "pcgrad-release"):
            raise ConfigError(f"--combine must be 'pcgrad' or 'pcgrad-release', not '{self.combine}'")
        checks = [
            ("lora_r", self.lora_r >= 1, "at least 1"),
            ("lora_alpha", self.lora_alpha > 0, "positive"),
            ("lora_dropout", 0 <= self.lora_dropout < 1, "in [0, 1)"),
            ("lr", self.lr > 0, "positive"),
            ("weight_decay", self.weight_decay >= 0, "non-negative"),
            ("warmup_steps", self.warmup_steps >= 0, "non-negative"),
            ("batch_size", self.batch_size >= 1, "at least 1"),
            ("grad_accum", self.grad_accum >= 1, "at least 1"),
            ("epochs", self.epochs >= 1, "at least 1"),
            ("max_grad_norm", self.max_grad_norm >= 0, "non-negative (0 turns clipping off)"),
            ("rho", self.rho is None or self.rho >= 0, "non-negative"),
            ("beta", self.beta is None or self.beta > 0, "positive"),
            ("sft_weight", self.sft_weight >= 0, "non-negative"),
            ("margin_target", True, ""),
            ("max_new_tokens", self.max_new_tokens >= 1, "at least 1"),
        ]
        for name, ok, need in checks:
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                ok, need = False, "a finite number"
            if not ok:
                raise ConfigError(f"invalid {name}={value!r}: it must be {need}")
        if self.reference not in ("base", "previous"):
            raise ConfigError(f"invalid reference={self.reference!r}: choose 'base' or 'previous'")
        if self.template not in ("auto", "chat", "raw"):
            raise ConfigError(f"invalid template={self.template!r}: choose auto, chat or raw")
        if not self.target_modules:
            raise ConfigError("target_modules is empty: name the modules that get LoRA, or 'all-linear'")

    # --- resolved values -------------------------------------------------------------------
    @property
    def spec(self) -> Method:
        return get_method(self.method)

    @property
    def sam_rho(self) -> float:
        """ρ actually used: 0 for methods without SAM."""
        if not self.spec.sam:
            return 0.0
        return 0.05 if self.rho is None else self.rho

    @property
    def dpo_beta(self) -> float:
        return 0.1 if self.beta is None else self.beta

    @property
    def combiner(self) -> str:
        """The gradient combination actually used: none, sum, pcgrad or pcgrad-release."""
        if self.spec.combine == "pcgrad":
            return self.combine or "pcgrad"
        return self.spec.combine

    def resolved(self) -> dict:
        """Every field plus the resolved method terms, as written into the run record."""
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        d["resolved"] = {"rho": self.sam_rho, "beta": self.dpo_beta if self.spec.dpo else None,
                         "combine": self.combiner, "dpo": self.spec.dpo, "sam": self.spec.sam}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EditConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"resolved"})
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in d.items() if k in known})
