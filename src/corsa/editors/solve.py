"""The closed-form weight changes of the locate-then-edit editors. Pure functions of tensors.

Convention (as the papers write it): an MLP output projection maps a key k ∈ ℝ^{d_in} to a
value v = W k ∈ ℝ^{d_out} (torch.nn.Linear's weight, d_out × d_in). The keys of n edits are
the columns of K (d_in × n); what the layer should add to their values, the columns of R
(d_out × n). C = E[k kᵀ] (d_in × d_in) is the second moment of the layer's keys over a text
corpus (editors.stats): the directions ordinary text uses, which an edit should leave alone.
Everything is solved in float64, whatever the model's dtype.
"""

from __future__ import annotations

import torch


def _f64(*tensors):
    return [t.double() for t in tensors]


def rome_update(W: torch.Tensor, k: torch.Tensor, v: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """ROME's rank-one change (Meng et al. 2022, "Locating and Editing Factual Associations in
    GPT", Eq. 2): ΔW = (v − W k) uᵀ / (uᵀ k) with u = C⁻¹ k.

    The edited layer maps the subject's key to the new value exactly, (W + ΔW) k = v, and among
    the changes that do, this one disturbs least the keys distributed as C: it solves
    min ‖ΔW Λ^½‖ subject to ΔW k = v − W k, where Λ = C⁻¹ weights directions by how rarely
    ordinary text uses them.
    """
    W, k, v, C = _f64(W, k, v, C)
    u = torch.linalg.solve(C, k)
    return torch.outer(v - W @ k, u) / (u @ k)


def memit_update(R: torch.Tensor, K: torch.Tensor, C: torch.Tensor, weight: float) -> torch.Tensor:
    """MEMIT's batch change (Meng et al. 2023, "Mass-Editing Memory in a Transformer", Eq. 14):
    ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹.

    The minimiser of ‖ΔW K − R‖² + λ · tr(ΔW C ΔWᵀ): the edits' keys should move their values
    by R, and the corpus keys (second moment C, counted λ times) should not move. λ C + K Kᵀ is
    symmetric, so ΔW = (A⁻¹ K Rᵀ)ᵀ with one solve.
    """
    R, K, C = _f64(R, K, C)
    A = weight * C + K @ K.T
    return torch.linalg.solve(A, K @ R.T).T


def null_space_projector(C: torch.Tensor, threshold: float) -> torch.Tensor:
    """AlphaEdit's projector (Fang et al., ICLR 2025, "AlphaEdit: Null-Space Constrained Knowledge
    Editing for Language Models", Eq. 9): P = Û Ûᵀ, Û the eigenvectors of C = E[k₀ k₀ᵀ] whose
    eigenvalues are below `threshold` · the largest.

    Any change of the form ΔP leaves the preserved keys' values alone: ΔP k₀ ≈ 0, exactly for
    the part of k₀ in the kept eigen-directions. The paper compares eigenvalues with an absolute
    threshold (1e-2 on its models); relative to the largest, the same setting carries over to
    models whose keys have another scale.
    """
    (C,) = _f64(C)
    values, vectors = torch.linalg.eigh((C + C.T) / 2)
    small = vectors[:, values < threshold * values.max()]
    return small @ small.T


def alphaedit_update(R: torch.Tensor, K: torch.Tensor, P: torch.Tensor, K_prev: torch.Tensor | None,
                     weight: float) -> torch.Tensor:
    """AlphaEdit's change (Fang et al. 2025, Eq. 14): Δ = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + α I)⁻¹.

    The minimiser, over changes of the form ΔP, of ‖ΔP K − R‖² + ‖ΔP K_p‖² + α‖ΔP‖²: the new
    edits' keys K move by R, the keys of earlier edits K_p (sequential editing: their second
    moment `K_prev` = Σ K_p K_pᵀ, or None before the first) keep their values, and so do the
    preserved keys, which the projection takes out: with M = A P + α I, M k₀ = α k₀ for a key
    with P k₀ = 0, so Δ k₀ = R Kᵀ P k₀ / α = 0.
    """
    R, K, P = _f64(R, K, P)
    A = K @ K.T + (K_prev.double() if K_prev is not None else 0)
    M = A @ P + weight * torch.eye(P.shape[0], dtype=P.dtype, device=P.device)
    # Δ M = R Kᵀ P  ⇔  Mᵀ Δᵀ = P K Rᵀ (P, A symmetric: Mᵀ = P A + α I)
    return torch.linalg.solve(M.T, P @ K @ R.T).T


def low_rank(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The best rank-`rank` factors of `delta` (Eckart–Young): B (d_out × r), A (r × d_in) with
    B A ≈ delta, and the relative error ‖delta − B A‖_F / ‖delta‖_F (0 when delta's rank ≤ r).

    The changes above have rank ≤ the number of edits they make, so a LoRA adapter of that rank
    carries them exactly; past it, this is the closest LoRA of the given rank.
    """
    (d,) = _f64(delta)
    U, S, Vh = torch.linalg.svd(d, full_matrices=False)
    r = min(rank, S.numel())
    B, A = U[:, :r] * S[:r], Vh[:r]
    if r < rank:  # pad to the adapter's rank with zero directions
        B = torch.cat([B, B.new_zeros(B.shape[0], rank - r)], dim=1)
        A = torch.cat([A, A.new_zeros(rank - r, A.shape[1])], dim=0)
    total = float(S.square().sum())
    error = (float(S[r:].square().sum()) / total) ** 0.5 if total > 0 else 0.0
    return B, A, error
