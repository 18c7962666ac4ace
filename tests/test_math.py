"""Pure primitives against hand-computed values: PCGrad, SAM, the two objectives."""

import math

import pytest
import torch

from corsa.objectives import answer_logprobs, dpo_loss, sft_loss
from corsa.pcgrad import combine_sum, cosine, pcgrad, pcgrad_release
from corsa.sam import add_flat_, restore_, sam_perturbation, snapshot


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_pcgrad_toy_case_from_method_md():
    g_dpo, g_sft = t(1, 0), t(-1, 1)
    assert torch.allclose(pcgrad([g_dpo, g_sft]), t(0.5, 1.5))


def test_pcgrad_release_toy_case_from_method_md():
    g_dpo, g_sft = t(1, 0), t(-1, 1)
    assert torch.allclose(pcgrad_release([g_dpo, g_sft]), t(-0.25, 0.75))


def test_pcgrad_without_conflict_is_the_sum():
    a, b = t(1, 2, 0), t(0.5, 0, 3)
    assert torch.allclose(pcgrad([a, b]), a + b)
    assert torch.allclose(pcgrad_release([a, b]), (a + b) / 2)


def test_pcgrad_projected_gradients_do_not_conflict():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        a, b = torch.randn(7, generator=gen, dtype=torch.float64), torch.randn(7, generator=gen, dtype=torch.float64)
        g = pcgrad([a, b])
        if torch.dot(a, b) >= 0:  # no conflict: the plain sum
            assert torch.allclose(g, a + b)
            continue
        # the merged direction conflicts with neither gradient (Yu et al. 2020, Theorem 1's premise)
        assert torch.dot(g, a) >= -1e-12 and torch.dot(g, b) >= -1e-12
        # and it is the sum minus one multiple of each original gradient
        coef = torch.linalg.lstsq(torch.stack([a, b], 1), (a + b - g).unsqueeze(1)).solution.squeeze()
        assert torch.allclose(torch.stack([a, b], 1) @ coef, a + b - g, atol=1e-10)


def test_pcgrad_three_gradients_hand_computed():
    # each g_i is projected off the originals it conflicts with; for three the order matters
    g1, g2, g3 = t(1, 0), t(-1, 1), t(0, 1)
    # g1 conflicts only with g2 → (0.5, 0.5); g2 conflicts only with g1 → (0, 1); g3 conflicts with none
    assert torch.allclose(pcgrad([g1, g2, g3]), t(0.5, 2.5))


def test_sum_and_cosine():
    assert torch.allclose(combine_sum([t(1, 0), t(-1, 1)]), t(0, 1))
    assert cosine(t(1, 0), t(-1, 1)) == pytest.approx(-1 / math.sqrt(2))
    assert cosine(t(0, 0), t(1, 1)) == 0.0


def test_sam_perturbation_has_norm_rho_along_g():
    g = t(3, 4)
    eps = sam_perturbation(g, 0.05)
    assert eps.norm().item() == pytest.approx(0.05)
    assert torch.allclose(eps, t(0.03, 0.04))
    assert torch.equal(sam_perturbation(t(0, 0), 0.05), t(0, 0))


def test_sam_restore_is_bit_identical():
    gen = torch.Generator().manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(3, 5, generator=gen)), torch.nn.Parameter(torch.randn(4, generator=gen))]
    before = [p.detach().clone() for p in params]
    saved = snapshot(params)
    g = torch.randn(19, generator=gen)
    add_flat_(params, sam_perturbation(g, 0.3))
    moved = torch.cat([(p - b).reshape(-1) for p, b in zip(params, before)])
    assert moved.norm().item() == pytest.approx(0.3, rel=1e-5)
    restore_(params, saved)
    assert all(torch.equal(p, b) for p, b in zip(params, before))


def test_answer_logprobs_sums_masked_tokens():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]]))  # (1, 2, 3)
    labels = torch.tensor([[0, 1]])
    assert answer_logprobs(logits, labels, torch.tensor([[1.0, 1.0]])).item() == pytest.approx(math.log(0.5 * 0.8), rel=1e-5)
    assert answer_logprobs(logits, labels, torch.tensor([[0.0, 1.0]])).item() == pytest.approx(math.log(0.8), rel=1e-5)


def test_sft_loss_is_token_mean_nll_averaged_over_edits():
    lp = t(-2.0, -9.0)
    n = t(2, 3)
    assert sft_loss(lp, n).item() == pytest.approx((1.0 + 3.0) / 2)


def test_dpo_loss_hand_computed():
    beta = 0.1
    pc, pr, rc, rr = t(-1.0), t(-3.0), t(-2.0), t(-2.5)
    z = beta * ((-1.0 + 2.0) - (-3.0 + 2.5))  # 0.15
    expected = -math.log(1 / (1 + math.exp(-z)))
    assert dpo_loss(pc, pr, rc, rr, beta).item() == pytest.approx(expected)
    # at the reference the loss is log 2 whatever β
    assert dpo_loss(rc, rr, rc, rr, 5.0).item() == pytest.approx(math.log(2))


def test_combination_coefficients_by_hand_and_against_the_combiners():
    from corsa.pcgrad import COMBINERS, coefficients

    g_dpo, g_sft = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    # d = −1, ‖g_dpo‖² = 1, ‖g_sft‖² = 2: pcgrad a = 1 + 1 = 2, b = 1 + ½ = 1.5; release a = ½, b = ½·1.5
    assert coefficients(g_dpo, g_sft, "pcgrad") == pytest.approx((2.0, 1.5))
    assert coefficients(g_dpo, g_sft, "pcgrad-release") == pytest.approx((0.5, 0.75))
    assert coefficients(g_dpo, g_sft, "sum") == (1.0, 1.0)
    assert coefficients(g_dpo, -g_sft, "pcgrad") == (1.0, 1.0)  # no conflict, no projection
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        a_, b_ = torch.randn(7, generator=gen), torch.randn(7, generator=gen)
        for name, fn in COMBINERS.items():
            a, b = coefficients(a_, b_, name)
            assert torch.allclose(a * a_ + b * b_, fn([a_, b_], torch.Generator().manual_seed(1)), atol=1e-5), name
