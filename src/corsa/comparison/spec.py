"""What one `corsa bench` command asks for: the spec, its per-method `--set` overrides, the edits it takes.

The rest of the comparison: :mod:`corsa.comparison.harness` runs a spec (and resumes it),
:mod:`corsa.comparison.results` is the schema of ``results.json``, :mod:`corsa.report` draws it.
"""

from __future__ import annotations

import dataclasses
import random
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..config import TRAINING_FIELDS, EditConfig, EvalSettings, upgraded
from ..errors import ConfigError
from ..methods import METHODS, OPTIONS, get_method
from ..records import Edit
from ..tracking import check as check_reporter

# options every method must share: the evaluation reads them, or they belong to the bench
SHARED_OPTIONS = {"method": "--methods", "seed": "--seed", "template": "--template",
                  "max_new_tokens": "--max-new-tokens"}


@dataclass
class BenchSpec:
    """One `corsa bench` command. `train` applies to every method (the method terms rho, beta and
    combine only where the method has them); `sets` holds per-method overrides."""

    model: str
    data: str
    out: Path
    methods: tuple[str, ...] = ("lora", "sam", "dpo", "corsa")
    n_edits: int = 60
    n_updates: int = 3
    seed: int = 0
    train: dict = field(default_factory=dict)
    sets: dict = field(default_factory=dict)
    eval: EvalSettings = field(default_factory=EvalSettings)
    mmlu: int = 0
    mmlu_file: str | None = None
    mmlu_seed: int = 0
    skip_invalid: bool = False
    # after update k < K, the earlier updates' edits measured on a seeded sample of this many (0: all of
    # them); the update's own edits, and after the last update every edit, are always measured
    earlier_sample: int = 0
    device: str | None = None
    progress: bool = True
    report_to: str = "none"  # "tensorboard": every method's steps in OUT/tensorboard/METHOD (corsa.tracking)

    def __post_init__(self):
        check_reporter(self.report_to)  # before the model loads, not minutes into the run
        self.out = Path(self.out)
        self.methods = tuple(self.methods)
        if not self.methods:
            raise ConfigError("--methods is empty; name at least one of " + ", ".join(METHODS))
        for m in self.methods:
            get_method(m)
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"--methods names a method twice: {','.join(self.methods)}")
        if self.n_updates < 1:
            raise ConfigError(f"--updates must be at least 1, not {self.n_updates}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"--seed must be a whole number from 0 to 2³² − 1, not {self.seed}")
        if self.n_edits < self.n_updates:
            raise ConfigError(f"--edits {self.n_edits} cannot be split into {self.n_updates} updates")
        if self.n_edits % self.n_updates:
            lo = self.n_edits - self.n_edits % self.n_updates
            raise ConfigError(f"--edits {self.n_edits} does not split into {self.n_updates} updates of equal size "
                              f"(method.md §6); use --edits {lo} or {lo + self.n_updates}")
        if self.earlier_sample < 0:
            raise ConfigError(f"--earlier-sample must be 0 (every earlier edit) or a number of edits, not {self.earlier_sample}")
        if self.mmlu < 0:
            raise ConfigError(f"--mmlu must be 0 (off) or a number of questions, not {self.mmlu}")
        for key in self.train:
            if key in ("method", "seed"):
                raise ConfigError(f"'{key}' is set by the bench itself ({SHARED_OPTIONS[key]})")
        for method, overrides in self.sets.items():
            if method not in self.methods:
                raise ConfigError(f"--set names '{method}', which is not among --methods {','.join(self.methods)}")
            for key in overrides:
                if key in SHARED_OPTIONS:
                    raise ConfigError(f"--set {method}.{key}: '{key}' must be the same for every method; "
                                      f"use {SHARED_OPTIONS[key]}")
        for m in self.methods:
            self.method_config(m)  # fail now, not after hours of other methods

    @property
    def template(self) -> str:
        return self.train.get("template", "auto")

    def method_folder(self, method: str) -> tuple[EditConfig, Path]:
        """`method`'s configuration and folder, refused if an earlier run there trained it otherwise."""
        from ..resume import check_same  # here, not at the top: resume imports torch, `corsa bench --help` does not

        cfg, folder = self.method_config(method), self.out / method
        check_same(folder / "config.json", cfg.resolved(), f"training options for {method}",
                   f"or delete {folder} to train {method} again", saved_as=upgraded)
        return cfg, folder

    def method_config(self, method: str) -> EditConfig:
        row = get_method(method)
        # a plain flag sets an option for every method that takes it (the method row says which; the
        # locate-then-edit rows take no training setting)
        d = {k: v for k, v in self.train.items() if row.uses(k) and not (row.solver and k in TRAINING_FIELDS)}
        d |= {"method": method, "seed": self.seed}
        d.update(self.sets.get(method, {}))
        return EditConfig.from_dict(d)


def parse_sets(items: list[str] | None) -> dict[str, dict]:
    """``["corsa.rho=0.1", "sam.lr=1e-4"]`` → ``{"corsa": {"rho": 0.1}, "sam": {"lr": 1e-4}}``."""
    hints = typing.get_type_hints(EditConfig)
    out: dict[str, dict] = {}
    for item in items or []:
        head, sep, value = item.partition("=")
        method, dot, key = head.strip().partition(".")
        key = key.replace("-", "_")
        if not sep or not dot or not method or not key:
            raise ConfigError(f"--set {item!r}: write METHOD.OPTION=VALUE, e.g. corsa.rho=0.1 "
                              f"(an option for every method is a plain flag, e.g. --lr 1e-4)")
        get_method(method)
        if key not in hints:
            raise ConfigError(f"--set {item!r}: unknown option '{key}'; options: "
                              + ", ".join(f.name for f in dataclasses.fields(EditConfig)))
        out.setdefault(method, {})[key] = _convert(value.strip(), hints[key], item, key)
    return out


def _none_is_a_value(key: str) -> bool:
    """Whether "none" is one of the option's own values (`replay=none`, `negatives=none`), not "unset"."""
    opt = OPTIONS.get(key)
    return opt is not None and ("none" in (opt.choices or ()) or opt.off == "none" or isinstance(opt.default, tuple))


def _convert(value: str, hint, item: str, key: str):
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    kind = next(t for t in typing.get_args(hint) if t is not type(None)) if optional else hint
    # null (or none, where none is not a value the option takes) leaves the row's default
    if optional and (value.lower() == "null" or (value.lower() == "none" and not _none_is_a_value(key))):
        return None
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        if typing.get_origin(kind) is tuple:
            return tuple(v.strip() for v in value.split(",") if v.strip())
        return kind(value)
    except ValueError:
        raise ConfigError(f"--set {item!r}: {value!r} is not a valid {getattr(kind, '__name__', kind)}") from None


# ---------------------------------------------------------------------------------------------
# choosing the edits (split in order into updates by corsa.updates.split_in_order)


def select(edits: list[Edit], n: int, seed: int) -> list[Edit]:
    """`n` edits chosen with `seed`; edits sharing multi-hop questions (an MQuAKE case) stay together."""
    groups: dict = {}
    for i, e in enumerate(edits):
        groups.setdefault(e.portability if e.portability else i, []).append(e)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    chosen, total = [], 0
    for group in order:
        if total + len(group) <= n:
            chosen += group
            total += len(group)
        if total == n:
            return chosen
    if len(edits) < n:
        raise ConfigError(f"--edits {n}: the data holds only {len(edits)} edits")
    raise ConfigError(f"--edits {n}: no whole set of cases adds up to {n} edits (the edits of a multi-hop "
                      f"case are kept together); try a multiple of the case size")

