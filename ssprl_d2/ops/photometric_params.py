"""Per-crop photometric parameters: the column layout of a parameter row and the sampler.

A row holds everything the photometric augmentation of one crop needs (whether colour jitter
is on, its four factors and their order, grayscale, blur and its sigma). Rows are drawn on the
CPU by the mappers (:func:`sample_photometric_params`) and read by both implementations of the
augmentation: :func:`ssprl_d2.ops.photometric.apply_photometric` (torch, loader or training
device) and the loader's numba kernel (:mod:`ssprl_d2.data.photometric_numba`).

The distribution is the reference torchvision/PIL recipe of SwAV / SS-PRL: colour jitter
(brightness, contrast, saturation, hue in a random order) with probability p, grayscale with
probability p, Gaussian blur with probability p and sigma ~ U(lo, hi).
"""
from typing import Optional, Sequence

import torch

# Column layout of a parameter row.
JITTER_ON, BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3, 4
ORDER = slice(5, 9)  # op index of each jitter step (0 brightness, 1 contrast, 2 sat., 3 hue)
GRAY_ON, BLUR_ON, SIGMA = 9, 10, 11
NUM_PARAMS = 12


def sample_photometric_params(
    n: int,
    *,
    jitter: Sequence[float] = (0.8, 0.8, 0.8, 0.2),
    jitter_prob: float = 0.8,
    grayscale_prob: float = 0.2,
    blur_prob: float = 0.5,
    blur_sigma: Sequence[float] = (0.1, 2.0),
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Draw ``n`` rows of photometric parameters, (n, NUM_PARAMS) float32.

    Factor ranges follow torchvision's ``ColorJitter``: brightness/contrast/saturation factors
    ~ U[max(0, 1 - v), 1 + v], hue shift ~ U[-h, h]; the order of the four is a random
    permutation per crop (column ``ORDER``: op index of each step, 0 = brightness,
    1 = contrast, 2 = saturation, 3 = hue).
    """
    g = generator
    # Columns in layout order (the draws keep their historical order: the same stream), then
    # one concatenation instead of a column assignment each.
    cols = [(torch.rand(n, generator=g) < jitter_prob).float()]  # JITTER_ON
    for v in jitter[:3]:  # BRIGHTNESS, CONTRAST, SATURATION
        lo, hi = max(0.0, 1.0 - v), 1.0 + v
        cols.append(lo + (hi - lo) * torch.rand(n, generator=g))
    cols.append((torch.rand(n, generator=g) * 2 - 1) * jitter[3])  # HUE
    order = torch.argsort(torch.rand(n, 4, generator=g), dim=1).float()  # ORDER
    cols.append((torch.rand(n, generator=g) < grayscale_prob).float())  # GRAY_ON
    cols.append((torch.rand(n, generator=g) < blur_prob).float())  # BLUR_ON
    lo, hi = blur_sigma
    cols.append(lo + (hi - lo) * torch.rand(n, generator=g))  # SIGMA
    p = torch.cat([torch.stack(cols[:5], dim=1), order, torch.stack(cols[5:], dim=1)], dim=1)
    return p
