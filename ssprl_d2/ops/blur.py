"""Batched separable Gaussian blur, each image with its own sigma.

Equal to ``torchvision.transforms.functional.gaussian_blur`` with kernel size
``2 * ceil(3 sigma) + 1`` (tests/test_photometric_equivalence.py); PIL's
``GaussianBlur(radius=sigma)`` of the reference recipe approximates the same Gaussian of
standard deviation sigma. The kernels can be built on the device (:func:`gaussian_kernels`)
or on the host from numpy sigmas (:func:`host_gaussian_kernels`, the pipeline's path).
"""
import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F


def blur_radius(sigma: float) -> int:
    """Kernel radius used for a blur of standard deviation ``sigma``: ceil(3 sigma)."""
    return int(math.ceil(3 * sigma))


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """(N, 2 radius + 1) normalised 1-D Gaussian kernels.

    Each kernel is truncated at its own radius ceil(3 sigma_i) (taps beyond are zero), so an
    image's blur does not depend on the other sigmas of the batch.
    """
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=sigma.device)
    sigma = sigma.to(torch.float32).view(-1, 1)
    k = torch.exp(-0.5 * (t.view(1, -1) / sigma) ** 2)
    k = k * (t.abs().view(1, -1) <= torch.ceil(3 * sigma))
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(
    x: torch.Tensor, sigma: torch.Tensor, radius: Optional[int] = None
) -> torch.Tensor:
    """Separable Gaussian blur of each image with its own sigma, reflect padding, float32.

    Equal to ``torchvision.transforms.functional.gaussian_blur`` with kernel size
    ``2 * ceil(3 sigma) + 1`` per image (images smaller than the kernel use replicate padding).

    Args:
        x: (N, C, H, W) float images.
        sigma: (N,) standard deviations.
        radius: kernel buffer radius, at least ceil(3 * max sigma) (computed when omitted).
    """
    n, c, h, w = x.shape
    if radius is None:
        radius = blur_radius(float(sigma.max()))
    k = gaussian_kernels(sigma, radius)  # (N, 2 radius + 1)
    pad_mode = "reflect" if min(h, w) > radius else "replicate"
    x = x.float()
    if torch.is_autocast_enabled(x.device.type):
        # Under autocast conv2d would run in half precision; keep the blur in float32.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return separable_blur(x, k, radius, pad_mode).contiguous()
    return separable_blur(x, k, radius, pad_mode).contiguous()


def separable_blur(x: torch.Tensor, k: torch.Tensor, radius: int, pad_mode: str) -> torch.Tensor:
    """Blur (N, C, H, W) float ``x`` with the (N, 2 radius + 1) kernels ``k``, one per image,
    horizontally then vertically, padding with ``pad_mode`` ("reflect" or "replicate")."""
    n, c, h, w = x.shape
    if n * c <= 6 and x.device.type == "cpu":
        # Few channels: oneDNN's depthwise conv is slow there; sum shifted slices instead.
        return _blur_shift_add(x, k, radius, pad_mode)
    weight = k.repeat_interleave(c, dim=0)  # (N*C, ks)
    # On the CPU, oneDNN's depthwise convolution is 10-50% faster on channels-last input
    # (one vector of channels per pixel) than on NCHW, conversion copies included.
    layout = torch.channels_last if x.device.type == "cpu" else torch.contiguous_format
    y = x.reshape(1, n * c, h, w)
    y = F.pad(y, (radius, radius, 0, 0), mode=pad_mode).contiguous(memory_format=layout)
    y = F.conv2d(y, weight.view(n * c, 1, 1, -1), groups=n * c)
    y = F.pad(y, (0, 0, radius, radius), mode=pad_mode).contiguous(memory_format=layout)
    y = F.conv2d(y, weight.view(n * c, 1, -1, 1), groups=n * c)
    return y.reshape(n, c, h, w)


def _blur_shift_add(x: torch.Tensor, k: torch.Tensor, radius: int, pad_mode: str) -> torch.Tensor:
    n, _, h, w = x.shape
    taps = k.view(n, 1, 1, 1, -1)
    y = F.pad(x, (radius, radius, radius, radius), mode=pad_mode)
    rows = y[..., 0:w] * taps[..., 0]  # horizontal pass, (N, C, H + 2 r, W)
    for i in range(1, 2 * radius + 1):
        rows.addcmul_(y[..., i : i + w], taps[..., i])
    out = rows[..., 0:h, :] * taps[..., 0]  # vertical pass
    for i in range(1, 2 * radius + 1):
        out.addcmul_(rows[..., i : i + h, :], taps[..., i])
    return out


def host_gaussian_kernels(sigma: np.ndarray, radius: int) -> np.ndarray:
    """:func:`gaussian_kernels` on the host (numpy sigmas), float32."""
    t = np.arange(-radius, radius + 1, dtype=np.float64)[None]
    sigma = sigma.astype(np.float64)[:, None]
    k = np.exp(-0.5 * (t / sigma) ** 2) * (np.abs(t) <= np.ceil(3 * sigma))
    return (k / k.sum(axis=1, keepdims=True)).astype(np.float32)
