"""Small building blocks of SS-PRL: projection heads, prototypes, cross-scale learners, queues."""
import logging
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


class ProjectionHead(nn.Sequential):
    """Linear-BN-ReLU-Linear MLP (SwAV's head); ``hidden_dim=0`` gives a single Linear."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        if hidden_dim > 0:
            layers = [
                nn.Linear(in_dim, hidden_dim),
                nn.BatchNorm1d(hidden_dim),
                nn.ReLU(inplace=True),
                nn.Linear(hidden_dim, out_dim),
            ]
        else:
            layers = [nn.Linear(in_dim, out_dim)]
        super().__init__(*layers)


class UnitRowLinear(nn.Linear):
    """Bias-free linear map whose weight rows are re-normalised to unit L2 norm every step.

    Used for the prototypes C_s (rows = prototypes, scores = z^T C_s) and for the cross-scale
    correlation learners g_phi,s (rows = scale-0 prototypes, input = K_s-dim representation).
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(in_dim, out_dim, bias=False)

    @torch.no_grad()
    def normalize_(self) -> None:
        self.weight.copy_(F.normalize(self.weight, dim=1))

    def forward(self, x: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        weight = self.weight.detach() if frozen else self.weight
        return F.linear(x, weight.to(x.dtype))


class FeatureQueue(nn.Module):
    """FIFO queues of past embeddings (one per slot: assignment crop or pyramid view).

    The embeddings are only used to enlarge the Sinkhorn batch; they carry no gradient. The
    state lives in persistent buffers and differs between ranks: ``per_rank_state`` makes
    :class:`ssprl_d2.checkpoint.SSPRLCheckpointer` save every rank's copy, so ``--resume``
    restores each rank its own queue.
    """

    # Read by SSPRLCheckpointer: the buffers are saved and restored per rank.
    per_rank_state = True

    def __init__(self, num_slots: int, length: int, dim: int):
        super().__init__()
        self.length = int(length)
        self.register_buffer("features", torch.zeros(num_slots, self.length, dim))
        self.register_buffer("num_filled", torch.zeros((), dtype=torch.long))

    @property
    def is_full(self) -> bool:
        return self.length > 0 and int(self.num_filled) >= self.length

    @torch.no_grad()
    def reset_(self) -> None:
        """Empty the queue; it is used again once refilled."""
        self.features.zero_()
        self.num_filled.zero_()

    @torch.no_grad()
    def push(self, new: List[torch.Tensor]) -> None:
        """Insert one (n, dim) tensor per slot at the front, dropping the oldest n entries."""
        if self.length == 0:
            return
        for slot, feats in enumerate(new):
            n = feats.shape[0]
            self.features[slot, n:] = self.features[slot, :-n].clone()
            self.features[slot, :n] = feats.detach().to(self.features.dtype)
        self.num_filled.fill_(min(self.length, int(self.num_filled) + new[0].shape[0]))


def per_rank_queue_lengths(
    lengths: Sequence[int], ims_per_batch: int, grids: Sequence[int], world_size: int
) -> List[int]:
    """Per-rank queue length of every scale: each global length rounded down to a multiple of
    the embeddings pushed per step (``ims_per_batch`` at scale 0, ``ims_per_batch * g_s^2`` at
    scale s), with a warning when rounded, then split over ``world_size`` ranks."""
    out = []
    for s, length in enumerate(lengths):
        per_step = ims_per_batch * (1 if s == 0 else grids[s - 1] ** 2)
        rounded = (length // per_step) * per_step
        if length and rounded != length:
            logger.warning(
                f"MODEL.SSPRL.QUEUE.LENGTHS[{s}]={length} is not a multiple of the "
                f"{per_step} embeddings pushed per step; rounded down to {rounded}."
            )
        out.append(rounded // world_size)
    return out
