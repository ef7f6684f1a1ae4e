import math

import torch

from ssprl_d2.modeling.losses import (
    cross_scale_loss,
    patch_mean_representation,
    patch_swapped_loss,
    soft_cross_entropy,
    swapped_prediction_loss,
)
from ssprl_d2.modeling.sinkhorn import sinkhorn_knopp


def _reference_marginals(scores, eps, iters):
    """Plain restatement of the Sinkhorn iterations, stopping before the final rescale."""
    q = torch.exp(scores.double() / eps).t()
    q /= q.sum()
    k, b = q.shape
    for _ in range(iters):
        q /= q.sum(1, keepdim=True)
        q /= k
        q /= q.sum(0, keepdim=True)
        q /= b
    return q


def test_sinkhorn_marginals():
    torch.manual_seed(0)
    scores = torch.randn(64, 16)
    q = sinkhorn_knopp(scores, epsilon=0.5, num_iters=50)
    assert q.dtype == torch.float32 and q.shape == (64, 16)
    # Rows (samples) are distributions; each prototype gets ~B/K of the mass.
    torch.testing.assert_close(q.sum(1), torch.ones(64))
    torch.testing.assert_close(q.sum(0), torch.full((16,), 64 / 16), rtol=1e-3, atol=1e-3)
    ref = _reference_marginals(scores, 0.5, 50)
    torch.testing.assert_close(ref.sum(0), torch.full((64,), 1 / 64, dtype=torch.float64))
    torch.testing.assert_close(ref.sum(1), torch.full((16,), 1 / 16, dtype=torch.float64),
                               rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(q, (ref * 64).t().float(), rtol=1e-4, atol=1e-6)


def test_sinkhorn_stable_with_large_scores_and_bf16():
    scores = torch.randn(32, 8) * 1000  # exp(scores / 0.05) overflows without the max shift
    q = sinkhorn_knopp(scores, 0.05, 3)
    assert torch.isfinite(q).all()
    q16 = sinkhorn_knopp(torch.randn(32, 8).to(torch.bfloat16), 0.05, 3)
    assert q16.dtype == torch.float32 and torch.isfinite(q16).all()
    torch.testing.assert_close(q16.sum(1), torch.ones(32))


def test_sinkhorn_equal_partition_on_uniform_scores():
    q = sinkhorn_knopp(torch.zeros(10, 5), 0.05, 3)
    torch.testing.assert_close(q, torch.full((10, 5), 0.2))


def test_soft_cross_entropy_known_value():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    target = torch.tensor([[1.0, 0.0, 0.0]])
    assert math.isclose(soft_cross_entropy(target, logits).item(), math.log(2), rel_tol=1e-6)


def test_swapped_loss_identical_views_lower_than_unrelated():
    torch.manual_seed(0)
    base = torch.randn(16, 10) * 5
    codes = [sinkhorn_knopp(base, 0.05, 3)] * 2
    same = swapped_prediction_loss(codes, [base, base, base], [0, 1], 0.1)
    other = swapped_prediction_loss(codes, [base, base, torch.randn(16, 10) * 5], [0, 1], 0.1)
    assert same < other
    # Pair averaging: with two crops it is the mean of the two directed cross-entropies.
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    qa, qb = torch.softmax(a, 1), torch.softmax(b, 1)
    expected = 0.5 * (soft_cross_entropy(qa, b / 0.1) + soft_cross_entropy(qb, a / 0.1))
    torch.testing.assert_close(swapped_prediction_loss([qa, qb], [a, b], [0, 1], 0.1), expected)
    torch.testing.assert_close(patch_swapped_loss(qa, qb, a, b, 0.1), expected)


def test_patch_mean_representation_modes():
    scores = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [0.0, 0.0]])  # B=2, M=2
    probs = patch_mean_representation(scores, 2, "probs", 1.0)
    torch.testing.assert_close(probs[0], torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(probs[1], torch.tensor([0.5, 0.5]))
    raw = patch_mean_representation(scores, 2, "scores", 1.0)
    torch.testing.assert_close(raw.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(raw[1], torch.tensor([1.0, 1.0]) / math.sqrt(2))
    # Normalised probs: the mean (0.5, 0.5) becomes a unit vector.
    unit = patch_mean_representation(scores, 2, "probs", 1.0, normalize=True)
    torch.testing.assert_close(unit, torch.full((2, 2), 1 / math.sqrt(2)))


def test_cross_scale_loss_averages_codes_and_views():
    q = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
    logits = [torch.tensor([[0.0, 0.0]])]
    torch.testing.assert_close(cross_scale_loss(q, logits, 1.0), torch.tensor(math.log(2)))
