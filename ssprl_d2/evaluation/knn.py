"""Weighted k-nearest-neighbour multi-label probe of frozen features.

The weighted kNN classifier of Wu et al. 2018 (instance discrimination) and DINO, adapted to
multi-label targets: for a query q with the k memory features m_i of highest cosine similarity
s_i = cos(q, m_i), the score of class c is

    score_c(q) = sum_i w_i y_ic / sum_i w_i,    w_i = exp(s_i / T),

with y_ic = 1 if memory image i is a positive of class c, else 0 (negatives and "ignore"
labels both count as 0). Scores lie in [0, 1] and are ranked per class by
:func:`ssprl_d2.evaluation.mean_average_precision`, so the probe's mAP is comparable across
queries. Nothing is excluded: the memory bank is a training set, the queries a test set.
"""
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .multilabel_evaluator import mean_average_precision

__all__ = [
    "knn_multilabel_map",
    "knn_multilabel_scores",
    "pooled_features",
    "subset_indices",
]


def knn_multilabel_scores(
    memory_features: torch.Tensor,
    memory_labels: torch.Tensor,
    query_features: torch.Tensor,
    k: int,
    temperature: float,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Weighted kNN vote of multi-label targets (see the module docstring).

    Args:
        memory_features: (N, D) features of the memory bank (need not be normalised).
        memory_labels: (N, C) targets of the memory bank; only entries equal to 1 vote.
        query_features: (Q, D) features of the queries.
        k: number of neighbours that vote; clamped to N.
        temperature: T of the weights exp(cosine / T).
        chunk_size: queries per similarity block (bounds memory to chunk_size x N).

    Returns:
        (Q, C) float32 scores in [0, 1].
    """
    if k < 1 or temperature <= 0:
        raise ValueError(f"k must be >= 1 and temperature > 0, got k={k}, T={temperature}")
    if memory_features.shape[0] != memory_labels.shape[0]:
        raise ValueError(
            f"{memory_features.shape[0]} memory features but {memory_labels.shape[0]} label rows"
        )
    memory = F.normalize(memory_features.float(), dim=1)  # (N, D)
    targets = (memory_labels == 1).float().to(memory.device)  # (N, C)
    k = min(k, memory.shape[0])
    scores = []
    for query in query_features.float().to(memory.device).split(chunk_size):
        sim = F.normalize(query, dim=1) @ memory.T  # (q, N)
        top_sim, top_idx = sim.topk(k, dim=1)  # (q, k), sorted: column 0 is the largest
        # exp((s - s_max) / T): the same normalised weights without overflow at small T.
        weights = ((top_sim - top_sim[:, :1]) / temperature).exp()  # (q, k)
        votes = torch.einsum("qk,qkc->qc", weights, targets[top_idx])  # (q, C)
        scores.append(votes / weights.sum(dim=1, keepdim=True))
    if not scores:
        return memory.new_zeros((0, targets.shape[1]))
    return torch.cat(scores)  # (Q, C)


def knn_multilabel_map(
    memory_features: torch.Tensor,
    memory_labels: torch.Tensor,
    query_features: torch.Tensor,
    query_labels: torch.Tensor,
    k: int,
    temperature: float,
    class_names: Optional[Sequence[str]] = None,
) -> float:
    """mAP (percent) of the weighted kNN scores of the queries against their labels.

    Query labels other than 0 and 1 (e.g. VOC "difficult") are left out of their class's
    ranking, as in :class:`ssprl_d2.evaluation.MultiLabelEvaluator`.

    Returns:
        100 * mAP over the classes with a positive query; NaN if no class has one.
    """
    scores = knn_multilabel_scores(memory_features, memory_labels, query_features, k, temperature)
    mean_ap, _ = mean_average_precision(
        scores.cpu().numpy(), query_labels.float().cpu().numpy(), None, class_names
    )
    return 100.0 * mean_ap


def subset_indices(num_items: int, max_items: int, seed: int = 0) -> List[int]:
    """Sorted indices of a fixed random subset of ``max_items`` of ``num_items`` items.

    ``numpy.random.RandomState(seed).choice(num_items, max_items, replace=False)``, sorted; all
    indices when ``max_items`` is 0 or not smaller than ``num_items``.
    """
    if max_items <= 0 or max_items >= num_items:
        return list(range(num_items))
    chosen = np.random.RandomState(seed).choice(num_items, size=max_items, replace=False)
    return sorted(int(i) for i in chosen)


@torch.no_grad()
def pooled_features(
    backbone: nn.Module,
    in_feature: str,
    images: torch.Tensor,
    pixel_mean: torch.Tensor,
    pixel_std: torch.Tensor,
) -> torch.Tensor:
    """Globally average-pooled ``in_feature`` map of uint8 images, normalised like the model.

    Args:
        backbone: a Detectron2 backbone (already in the wanted train / eval mode).
        in_feature: the feature map that is pooled (e.g. "res5").
        images: (B, 3, H, W) RGB images on the 0-255 scale (any dtype).
        pixel_mean, pixel_std: broadcastable to (1, 3, 1, 1), on the backbone's device.

    Returns:
        (B, C_feat) float32 features.
    """
    x = (images.to(pixel_mean.device).float() - pixel_mean) / pixel_std
    return backbone(x)[in_feature].float().mean(dim=(2, 3))  # (B, C_feat)
