"""Batched colour ops on (N, 3, H, W) float images, each image with its own factor.

In-place brightness, contrast and saturation blends and an HSV hue rotation that never
materialises HSV; they equal ``torchvision.transforms.functional``'s ``adjust_brightness``,
``adjust_contrast``, ``adjust_saturation``, ``adjust_hue`` and ``rgb_to_grayscale`` on float
images (tests/test_photometric_equivalence.py). Values are in [0, bound] (1 for float images
in [0, 1], 255 for uint8 pixels converted to float).
"""
import functools
from typing import Optional, Tuple

import torch

# ITU-R 601 luma, as torchvision's rgb_to_grayscale and PIL's "L" conversion.
LUMA = (0.299, 0.587, 0.114)


def _view(v: torch.Tensor) -> torch.Tensor:
    return (v if v.dtype == torch.float32 else v.float()).view(-1, 1, 1, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma."""
    r, g, b = x.unbind(1)
    y = r * LUMA[0]
    y.add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2])
    return y.unsqueeze(1)


def adjust_brightness_(x: torch.Tensor, factor: torch.Tensor, bound: float = 1.0) -> torch.Tensor:
    """In place: blend each image of (N, 3, H, W) (values in [0, bound]) with black by
    ``factor`` (N,), then clamp."""
    return x.mul_(_view(factor)).clamp_(0, bound)


@functools.lru_cache(maxsize=32)
def _cached_constant(values: Tuple[float, ...], dtype: torch.dtype, device: torch.device):
    return torch.tensor(values, dtype=dtype, device=device)


def _constant(values: Tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    return _cached_constant(values, like.dtype, like.device)


def gray_mean(x: torch.Tensor) -> torch.Tensor:
    """(N,) mean grey level of each image of (N, 3, H, W)."""
    return x.mean(dim=(2, 3)) @ _constant(LUMA, x)


def adjust_contrast_(
    x: torch.Tensor, factor: torch.Tensor, bound: float = 1.0, mean: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """In place: blend each image with its mean grey level (``mean``, computed when omitted),
    then clamp."""
    if mean is None:
        mean = gray_mean(x)
    return x.mul_(_view(factor)).add_(_view((1 - factor) * mean)).clamp_(0, bound)


def adjust_saturation_(x: torch.Tensor, factor: torch.Tensor, bound: float = 1.0) -> torch.Tensor:
    """In place: blend each image with its grayscale image, then clamp."""
    gray = _gray(x).mul_(_view(1 - factor))
    # x * f + (1 - f) * gray in one pass.
    return torch.addcmul(gray, x, _view(factor), out=x).clamp_(0, bound)


def adjust_hue(
    x: torch.Tensor, shift: torch.Tensor, out: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Rotate the HSV hue of each image of (N, 3, H, W) (values >= 0, any scale) by ``shift``
    (N,) turns.

    Equal to RGB -> HSV, h += shift (mod 1), HSV -> RGB (torchvision's ``adjust_hue``) without
    materialising HSV: with max M, min m, delta d = M - m and u = 6 h mod 6, output channel c is
    ``M - d * clamp(2 - dist(u, centre_c), 0, 1)`` with the circular distance on [0, 6) and
    centres 3 (red), 5 (green), 1 (blue). Ties between channels resolve as torchvision's
    (red, then green, then blue). ``out`` may be ``x`` itself (in place).
    """
    r, g, b = x.unbind(1)
    maxc = x.amax(dim=1)  # (N, H, W)
    delta = maxc - x.amin(dim=1)
    # Indicators "channel is the max" as floats (bool kernels are slow on CPU), scaled by 1e-6
    # (and used with value=1e6): 1 when equal, 0 when below by more than 1e-6; in between, the
    # two sextant formulas agree to ~1e-6.
    is_r = torch.sub(r, maxc).add_(1e-6).clamp_min_(0)
    is_g = torch.sub(g, maxc).add_(1e-6).clamp_min_(0)
    h6 = torch.sub(r, g).add_(delta, alpha=4)  # max b: 6 h = 4 + (r - g) / d
    t = torch.sub(b, r).add_(delta, alpha=2)  # max g: 2 + (b - r) / d
    h6.addcmul_(is_g, t.sub_(h6), value=1e6)  # g takes precedence over b
    torch.sub(g, b, out=t)  # max r: (g - b) / d
    h6.addcmul_(is_r, t.sub_(h6), value=1e6)  # r over g and b
    h6.div_(delta.clamp_min(1e-12)).add_(6 * shift.view(-1, 1, 1))
    h6.sub_(torch.floor(h6 * (1 / 6)).mul_(6))  # mod 6 (torch.remainder is slow on CPU)
    top = maxc.add_(delta)  # M + d
    # The circular distance on [0, 6) is 3 - ||u - centre| - 3|, so
    # out_c = M - 2 d + d * clamp(3 - q_c, 1, 2) = M + d - d * clamp(q_c, 1, 2) with
    # q_c = ||u - centre_c| - 3|. x itself is no longer read from here on.
    out = torch.empty_like(x) if out is None else out
    torch.sub(h6.unsqueeze(1), _constant((3.0, 5.0, 1.0), x).view(1, 3, 1, 1), out=out)
    out.abs_().sub_(3).abs_().clamp_(1, 2)
    return torch.addcmul(top.unsqueeze(1), delta.unsqueeze(1), out, value=-1, out=out)
