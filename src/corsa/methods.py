"""CoRSA and its baselines are rows of one table (method.md §4).

Each row says which objectives are trained, how their gradients are combined and whether
SAM perturbs the adapter. The training step reads these fields and nothing else, so a
baseline is exactly CoRSA with parts switched off.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Method:
    name: str
    dpo: bool          # train the DPO objective (y⁺ chosen, y⁻ rejected) beside SFT on y⁺
    combine: str       # "none" (SFT alone), "sum" or "pcgrad"
    sam: bool          # perturb by ρ·g/‖g‖ and take the gradient there
    description: str


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("lora", dpo=False, combine="none", sam=False, description="SFT on y⁺ with LoRA"),
    Method("sam", dpo=False, combine="none", sam=True, description="SFT on y⁺ with SAM"),
    Method("dpo", dpo=True, combine="sum", sam=False, description="SFT + DPO, gradients summed"),
    Method("corsa", dpo=True, combine="pcgrad", sam=True, description="SFT + DPO, PCGrad, SAM (CoRSA)"),
    Method("corsa-no-sam", dpo=True, combine="pcgrad", sam=False, description="CoRSA without SAM"),
    Method("corsa-no-pcgrad", dpo=True, combine="sum", sam=True, description="CoRSA with summed gradients"),
]}


def get_method(name: str) -> Method:
    """The method called `name`; an unknown name is an error listing the valid ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method '{name}'; choose one of: {', '.join(METHODS)}") from None
