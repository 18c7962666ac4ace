"""Sharpness-Aware Minimization on the LoRA parameters (Foret et al. 2021).

SAM minimises max_{‖ε‖≤ρ} L(φ+ε). To first order the inner maximiser is ε = ρ·g/‖g‖₂, so a
step evaluates the gradient at φ+ε and applies it at φ. We restore φ from an exact copy rather
than subtracting ε, because (φ+ε)−ε is not φ in floating point.
"""

from __future__ import annotations

import torch


def sam_perturbation(g: torch.Tensor, rho: float) -> torch.Tensor:
    """ε = ρ · g / ‖g‖₂ over the flat gradient of all trainable parameters (one global norm)."""
    norm = g.norm()
    if norm == 0:
        return torch.zeros_like(g)
    return g * (rho / norm)


def snapshot(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """An exact copy of the parameters, to restore after the perturbed pass."""
    return [p.detach().clone() for p in params]


@torch.no_grad()
def add_flat_(params: list[torch.nn.Parameter], flat: torch.Tensor) -> None:
    """φ ← φ + flat, where flat is laid out as the concatenation of the flattened parameters."""
    offset = 0
    for p in params:
        n = p.numel()
        p.add_(flat[offset:offset + n].view_as(p).to(p.dtype))
        offset += n


@torch.no_grad()
def restore_(params: list[torch.nn.Parameter], saved: list[torch.Tensor]) -> None:
    """φ ← saved φ, bit for bit."""
    for p, s in zip(params, saved):
        p.copy_(s)
