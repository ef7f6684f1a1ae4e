"""SwAV/SS-PRL photometric augmentation with per-crop parameters, batched.

Parameters are drawn per crop on the CPU by the mapper (:func:`sample_photometric_params`) and
applied by :func:`apply_photometric`, either in the loader (on the crops of one image) or on the
training device (on all crops of a batch). Both paths use the same functions, so they follow the
same distribution as the reference torchvision/PIL recipe:
colour jitter (brightness, contrast, saturation, hue in a random order) with probability p,
grayscale with probability p, Gaussian blur with probability p and sigma ~ U(lo, hi).
"""
import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

# Column layout of a parameter row.
JITTER_ON, BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3, 4
ORDER = slice(5, 9)
GRAY_ON, BLUR_ON, SIGMA = 9, 10, 11
NUM_PARAMS = 12
_LUMA = (0.299, 0.587, 0.114)


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
    permutation per crop.
    """
    g = generator
    p = torch.zeros(n, NUM_PARAMS)
    p[:, JITTER_ON] = (torch.rand(n, generator=g) < jitter_prob).float()
    for col, v in zip((BRIGHTNESS, CONTRAST, SATURATION), jitter[:3]):
        lo, hi = max(0.0, 1.0 - v), 1.0 + v
        p[:, col] = lo + (hi - lo) * torch.rand(n, generator=g)
    p[:, HUE] = (torch.rand(n, generator=g) * 2 - 1) * jitter[3]
    p[:, ORDER] = torch.argsort(torch.rand(n, 4, generator=g), dim=1).float()
    p[:, GRAY_ON] = (torch.rand(n, generator=g) < grayscale_prob).float()
    p[:, BLUR_ON] = (torch.rand(n, generator=g) < blur_prob).float()
    p[:, SIGMA] = blur_sigma[0] + (blur_sigma[1] - blur_sigma[0]) * torch.rand(n, generator=g)
    return p


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)  # (N, 1, H, W)


def _blend(x: torch.Tensor, y: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (f.view(-1, 1, 1, 1) * x + (1 - f.view(-1, 1, 1, 1)) * y).clamp_(0, 1)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> HSV with all channels in [0, 1]."""
    r, g, b = x.unbind(1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), maxc * 0)
    return torch.stack([h, s, maxc], dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`."""
    h, s, v = x.unbind(1)
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = i.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = torch.stack(
        [
            torch.stack([v, t, p], 1),
            torch.stack([q, v, p], 1),
            torch.stack([p, v, t], 1),
            torch.stack([p, q, v], 1),
            torch.stack([t, p, v], 1),
            torch.stack([v, p, q], 1),
        ],
        dim=1,
    )  # (N, 6, 3, H, W)
    idx = i.unsqueeze(1).unsqueeze(1).expand(-1, 1, 3, -1, -1)
    return choices.gather(1, idx).squeeze(1)


def _adjust(x: torch.Tensor, op: int, p: torch.Tensor) -> torch.Tensor:
    if op == 0:  # brightness: blend with black
        return (x * p[:, BRIGHTNESS].view(-1, 1, 1, 1)).clamp_(0, 1)
    if op == 1:  # contrast: blend with the mean gray level of the image
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        return _blend(x, mean, p[:, CONTRAST])
    if op == 2:  # saturation: blend with the grayscale image
        return _blend(x, _gray(x), p[:, SATURATION])
    hsv = rgb_to_hsv(x)
    hsv[:, 0] = (hsv[:, 0] + p[:, HUE].view(-1, 1, 1)) % 1.0
    return hsv_to_rgb(hsv)


def gaussian_kernels(sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """(N, k) normalised 1-D Gaussian kernels, k = 2 * ceil(3 * max_sigma) + 1."""
    radius = int(math.ceil(3 * max_sigma))
    t = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)
    k = torch.exp(-0.5 * (t.view(1, -1) / sigma.view(-1, 1)) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float = 2.0) -> torch.Tensor:
    """Separable Gaussian blur of each image with its own sigma, reflect padding."""
    n, c, h, w = x.shape
    k = gaussian_kernels(sigma, max(max_sigma, float(sigma.max())))  # (N, ks)
    r = k.shape[1] // 2
    weight = k.repeat_interleave(c, dim=0)  # (N*C, ks)
    y = x.reshape(1, n * c, h, w)
    pad_mode = "reflect" if min(h, w) > r else "replicate"
    y = F.pad(y, (r, r, 0, 0), mode=pad_mode)
    y = F.conv2d(y, weight.view(n * c, 1, 1, -1), groups=n * c)
    y = F.pad(y, (0, 0, r, r), mode=pad_mode)
    y = F.conv2d(y, weight.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)


def apply_photometric(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Apply per-image photometric augmentation.

    Args:
        x: (N, 3, H, W) float RGB in [0, 1].
        params: (N, NUM_PARAMS) rows from :func:`sample_photometric_params`.

    Returns:
        (N, 3, H, W) float RGB in [0, 1].
    """
    params = params.to(x.device, torch.float32)
    x = x.float()
    on = params[:, JITTER_ON] > 0.5
    if on.any():
        idx = on.nonzero().squeeze(1)
        sub, p = x[idx], params[idx]
        order = p[:, ORDER].long()  # (n, 4)
        for step in range(4):
            for op in range(4):
                sel = (order[:, step] == op).nonzero().squeeze(1)
                if sel.numel():
                    sub[sel] = _adjust(sub[sel], op, p[sel])
        x = x.clone()
        x[idx] = sub
    gray = params[:, GRAY_ON] > 0.5
    if gray.any():
        idx = gray.nonzero().squeeze(1)
        x = x.clone() if not on.any() else x
        x[idx] = _gray(x[idx]).expand(-1, 3, -1, -1)
    blur = params[:, BLUR_ON] > 0.5
    if blur.any():
        idx = blur.nonzero().squeeze(1)
        x = x.clone()
        x[idx] = gaussian_blur(x[idx], params[idx, SIGMA])
    return x
