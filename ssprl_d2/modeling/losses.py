"""SS-PRL losses (paper Eq. 2-4) as pure functions of codes and scores.

Conventions: every term is the mean cross-entropy over its (target code, prediction) pairs,
i.e. Eq. 2 and Eq. 3 divided by the number of directions. Both L_pyr and L_cross use the same
convention, so alpha_s, beta_s and lambda keep the paper's relative meaning.
"""
from typing import Dict, Sequence

import torch
import torch.nn.functional as F


def soft_cross_entropy(targets: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum_k targets_k * log_softmax(logits)_k``.

    Args:
        targets: (N, K) distributions (no gradient is taken through them).
        logits: (N, K) unnormalised predictions (already divided by the temperature).
    """
    return -(targets.detach() * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def swapped_prediction_loss(
    codes: Sequence[torch.Tensor],
    scores: Sequence[torch.Tensor],
    assign_ids: Sequence[int],
    temperature: float,
) -> torch.Tensor:
    """SwAV multi-crop swapped prediction (the s=0 term of Eq. 2).

    Args:
        codes: codes[i] (B, K) for each crop index in ``assign_ids`` (same order).
        scores: scores[v] (B, K) for every crop v (raw z^T C, not yet divided by tau).
        assign_ids: indices of the crops whose codes are targets.
        temperature: tau of Eq. 1.

    Returns:
        mean over assignment crops i of the mean over crops v != i of CE(q_i, p_v).
    """
    total = 0.0
    for q, i in zip(codes, assign_ids):
        others = [v for v in range(len(scores)) if v != i]
        sub = sum(soft_cross_entropy(q, scores[v] / temperature) for v in others)
        total = total + sub / len(others)
    return total / len(assign_ids)


def patch_swapped_loss(
    codes_a: torch.Tensor,
    codes_b: torch.Tensor,
    scores_a: torch.Tensor,
    scores_b: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Pyramid-scale swapped prediction (s >= 1 term of Eq. 2).

    Patch m of view A predicts the code of patch m of view B and vice versa; rows of the four
    (B*M, K) tensors must correspond. The mean over rows is the 1/M_s sum over patches averaged
    over the batch.
    """
    return 0.5 * (
        soft_cross_entropy(codes_b, scores_a / temperature)
        + soft_cross_entropy(codes_a, scores_b / temperature)
    )


def patch_mean_representation(
    scores: torch.Tensor,
    num_patches: int,
    mode: str,
    temperature: float,
    normalize: bool = False,
) -> torch.Tensor:
    """mu(P_s) of Eq. 3: the mean prototype representation of the M_s patches of each image.

    Args:
        scores: (B*M, K) raw prototype scores, image-major (patches of one image contiguous).
        num_patches: M_s.
        mode: "probs" (mean of softmax(scores / tau), the paper) or "scores" (mean raw scores,
            L2-normalised, the authors' release).
        temperature: tau of the softmax ("probs").
        normalize: L2-normalise the "probs" mean too ("scores" always is).
    """
    per_image = scores.float().reshape(-1, num_patches, scores.shape[-1])  # (B, M, K)
    if mode == "probs":
        mean = F.softmax(per_image / temperature, dim=-1).mean(dim=1)  # (B, K)
        return F.normalize(mean, dim=-1) if normalize else mean
    if mode == "scores":
        return F.normalize(per_image.mean(dim=1), dim=-1)  # (B, K)
    raise ValueError(f"cross-scale input mode must be 'probs' or 'scores', got {mode!r}")


def cross_scale_loss(
    global_codes: Sequence[torch.Tensor], cross_logits: Sequence[torch.Tensor], temperature: float
) -> torch.Tensor:
    """One scale's L_cross term (Eq. 3): g_phi(mu(P_s)) of every pyramid view predicts the
    scale-0 codes of every assignment crop.

    Args:
        global_codes: (B, K_0) codes of the scale-0 assignment crops.
        cross_logits: (B, K_0) g_phi outputs for each pyramid view (V and V').
    """
    terms = [
        soft_cross_entropy(q, logits / temperature)
        for q in global_codes
        for logits in cross_logits
    ]
    return sum(terms) / len(terms)


def check_finite_losses(losses: Dict[str, torch.Tensor], iteration: int) -> None:
    """Raise ``FloatingPointError`` naming the first loss term that is NaN or infinite."""
    for name, value in losses.items():
        if not torch.isfinite(value).all():
            raise FloatingPointError(
                f"SS-PRL loss term '{name}' is {value.item()} at iteration {iteration}. "
                "Training stopped before applying this step; the last checkpoint in "
                "OUTPUT_DIR holds the last good state. Lower SOLVER.BASE_LR, check the "
                "data, or use bf16 instead of fp16 (SOLVER.AMP.PRECISION)."
            )
