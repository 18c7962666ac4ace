"""Combining the SFT and DPO gradients (method.md §3).

Gradients are flat vectors over all trainable (LoRA) parameters, so every dot product and
norm is global, never per tensor.
"""

from __future__ import annotations

import torch


def combine_sum(grads: list[torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
    """g = Σᵢ gᵢ (the `dpo` and `corsa-no-pcgrad` methods)."""
    return torch.stack(grads).sum(0)


def pcgrad(grads: list[torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
    """PCGrad (Yu et al. 2020, Alg. 1): project each gᵢ off every conflicting *original* gⱼ.

    For each i, for each j ≠ i in random order: if gᵢ·gⱼ < 0 then gᵢ ← gᵢ − (gᵢ·gⱼ / ‖gⱼ‖²) gⱼ.
    Returns Σᵢ gᵢ. With g_dpo=(1,0), g_sft=(−1,1) this gives (0.5, 1.5).
    """
    projected = []
    for i, g_i in enumerate(grads):
        g_i = g_i.clone()
        others = [j for j in range(len(grads)) if j != i]
        order = torch.randperm(len(others), generator=generator).tolist()
        for k in order:
            g_j = grads[others[k]]
            dot = torch.dot(g_i, g_j)
            if dot < 0:
                g_i -= dot / torch.dot(g_j, g_j).clamp_min(1e-30) * g_j
        projected.append(g_i)
    return torch.stack(projected).sum(0)


def pcgrad_release(grads: list[torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
    """PCGrad as the authors' release implements it, for comparison with their numbers.

    With grads = [g_dpo, g_sft]: g_dpo is projected off g_sft, then g_sft off the *already
    projected* g_dpo (a projection that can never fire, since the two are then orthogonal or
    agree), and the **mean** is returned. With g_dpo=(1,0), g_sft=(−1,1) this gives (−0.25, 0.75).
    """
    projected = [g.clone() for g in grads]
    for i in range(len(projected)):
        for j in range(len(projected)):
            if i == j:
                continue
            dot = torch.dot(projected[i], projected[j])
            if dot < 0:
                projected[i] -= dot / torch.dot(projected[j], projected[j]).clamp_min(1e-30) * projected[j]
    return torch.stack(projected).mean(0)


COMBINERS = {"sum": combine_sum, "pcgrad": pcgrad, "pcgrad-release": pcgrad_release}


def coefficients(g_dpo: torch.Tensor, g_sft: torch.Tensor, combiner: str) -> tuple[float, float]:
    """(a, b) with COMBINERS[combiner]([g_dpo, g_sft]) = a·g_dpo + b·g_sft.

    With two gradients every combination is such a sum. Let d = g_dpo·g_sft; when d < 0:
    pcgrad gives a = 1 − d/‖g_dpo‖², b = 1 − d/‖g_sft‖² (each projected off the other, the
    random order does not matter with two); pcgrad-release gives a = ½, b = ½(1 − d/‖g_sft‖²)
    (only g_dpo is projected, then the mean). When d ≥ 0 nothing is projected. sum: (1, 1).
    With g_dpo=(1,0), g_sft=(−1,1): pcgrad (2, 1.5), pcgrad-release (0.5, 0.75).
    """
    if combiner == "sum":
        return 1.0, 1.0
    half = 0.5 if combiner == "pcgrad-release" else 1.0
    d = float(torch.dot(g_dpo, g_sft))
    if d >= 0:
        return half, half
    a = half if combiner == "pcgrad-release" else 1.0 - d / max(float(torch.dot(g_dpo, g_dpo)), 1e-30)
    b = half * (1.0 - d / max(float(torch.dot(g_sft, g_sft)), 1e-30))
    return a, b


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two flat gradients (0 when either is zero)."""
    denom = a.norm() * b.norm()
    return float(torch.dot(a, b) / denom) if denom > 0 else 0.0
