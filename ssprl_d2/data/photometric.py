"""SwAV/SS-PRL photometric augmentation with per-crop parameters, batched.

Parameters are drawn per crop on the CPU by the mapper (:func:`sample_photometric_params`) and
applied by :func:`apply_photometric`, either in the loader (on the crops of one image, batched
per crop size) or on the training device (on all crops of a batch). Both paths use the same
functions, so they follow the same distribution as the reference torchvision/PIL recipe:
colour jitter (brightness, contrast, saturation, hue in a random order) with probability p,
grayscale with probability p, Gaussian blur with probability p and sigma ~ U(lo, hi).

The operations match ``torchvision.transforms.functional`` on float images (``adjust_brightness``,
``adjust_contrast``, ``adjust_saturation``, ``adjust_hue``, ``rgb_to_grayscale``) and
``gaussian_blur`` with kernel size ``2 * ceil(3 sigma) + 1`` (see tests/test_photometric_
equivalence.py); PIL's ``GaussianBlur(radius=sigma)`` of the release approximates the same
Gaussian of standard deviation sigma.
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
# ITU-R 601 luma, as torchvision's rgb_to_grayscale and PIL's "L" conversion.
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
    permutation per crop (column ``ORDER``: op index of each step, 0 = brightness,
    1 = contrast, 2 = saturation, 3 = hue).
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


# ---------------------------------------------------------------------------- pure colour ops
def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)  # (N, 1, H, W)


def _factor(f: torch.Tensor) -> torch.Tensor:
    return f.to(torch.float32).view(-1, 1, 1, 1)


def adjust_brightness_(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """In place: blend each image of (N, 3, H, W) with black by ``factor`` (N,), clamp."""
    return x.mul_(_factor(factor)).clamp_(0, 1)


def _blend_(x: torch.Tensor, y: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    # f x + (1 - f) y == f (x - y) + y, computed in place in x.
    return x.sub_(y).mul_(_factor(factor)).add_(y).clamp_(0, 1)


def adjust_contrast_(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """In place: blend with the mean grey level of each image."""
    luma = torch.tensor(_LUMA, dtype=x.dtype, device=x.device)
    mean = (x.mean(dim=(2, 3)) @ luma).view(-1, 1, 1, 1)  # mean of the grayscale image
    return _blend_(x, mean, factor)


def adjust_saturation_(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """In place: blend with the grayscale image."""
    return _blend_(x, _gray(x), factor)


def adjust_hue(
    x: torch.Tensor, shift: torch.Tensor, out: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Rotate the HSV hue of each image of (N, 3, H, W) in [0, 1] by ``shift`` (N,) turns.

    Equal to RGB -> HSV, h += shift (mod 1), HSV -> RGB (torchvision's ``adjust_hue``) without
    materialising HSV: with max M, min m, delta d = M - m and u = 6 h mod 6, output channel c is
    ``M - d * clamp(2 - dist(u, centre_c), 0, 1)`` with circular distance dist on [0, 6) and
    centres 3 (red), 5 (green), 1 (blue). ``out`` may be ``x`` itself (in place).
    """
    r, g, b = x.unbind(1)
    maxc = x.amax(dim=1)  # (N, H, W)
    delta = maxc - x.amin(dim=1)
    # Indicators "channel is the max" as floats (bool kernels are slow on CPU): 1 when equal,
    # 0 when below by more than 1e-6; in between, the two sextant formulas agree to ~1e-6.
    is_r = (r - maxc).mul_(1e6).add_(1).clamp_(0, 1)
    is_g = (g - maxc).mul_(1e6).add_(1).clamp_(0, 1).mul_(1 - is_r)
    # 6 h = (g - b) / d (max r), 2 + (b - r) / d (max g), 4 + (r - g) / d (max b).
    h_b = (r - g).add_(delta, alpha=4)
    h6 = h_b + is_r * ((g - b) - h_b) + is_g * ((b - r).add_(delta, alpha=2) - h_b)
    h6.div_(delta.clamp_min(1e-12)).add_(6 * shift.to(x.dtype).view(-1, 1, 1))
    h6.sub_(torch.floor(h6 * (1 / 6)).mul_(6))  # mod 6 (torch.remainder is slow on CPU)
    out = torch.empty_like(x) if out is None else out
    for c, centre in enumerate((3.0, 5.0, 1.0)):
        dist = (h6 - centre).abs_()
        if centre != 3.0:  # |u - 3| <= 3 is already the circular distance
            dist = torch.minimum(dist, 6 - dist)
        f = dist.neg_().add_(2).clamp_(0, 1)
        torch.addcmul(maxc, delta, f, value=-1, out=out[:, c])
    return out


# ---------------------------------------------------------------------------- blur
def blur_radius(sigma: float) -> int:
    """Kernel radius used for a blur of standard deviation ``sigma``: ceil(3 sigma)."""
    return int(math.ceil(3 * sigma))


def gaussian_kernels(sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """(N, 2 R + 1) normalised 1-D Gaussian kernels, R = ceil(3 * max_sigma).

    Each kernel is truncated at its own radius ceil(3 sigma_i) (taps beyond are zero), so an
    image's blur does not depend on the other sigmas of the batch.
    """
    radius = blur_radius(max_sigma)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=sigma.device)
    sigma = sigma.to(torch.float32).view(-1, 1)
    k = torch.exp(-0.5 * (t.view(1, -1) / sigma) ** 2)
    k = k * (t.abs().view(1, -1) <= torch.ceil(3 * sigma))
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float = 2.0) -> torch.Tensor:
    """Separable Gaussian blur of each image with its own sigma, reflect padding, float32.

    Args:
        x: (N, C, H, W) float images.
        sigma: (N,) standard deviations.
        max_sigma: the largest sigma expected; only sets the kernel buffer size.
    """
    n, c, h, w = x.shape
    k = gaussian_kernels(sigma, max(max_sigma, float(sigma.max())))  # (N, ks)
    r = k.shape[1] // 2
    weight = k.repeat_interleave(c, dim=0)  # (N*C, ks)
    # Under autocast conv2d would run in half precision; keep the blur in float32.
    with torch.autocast(device_type=x.device.type, enabled=False):
        y = x.float().reshape(1, n * c, h, w)
        pad_mode = "reflect" if min(h, w) > r else "replicate"
        y = F.pad(y, (r, r, 0, 0), mode=pad_mode)
        y = F.conv2d(y, weight.view(n * c, 1, 1, -1), groups=n * c)
        y = F.pad(y, (0, 0, r, r), mode=pad_mode)
        y = F.conv2d(y, weight.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)


# ---------------------------------------------------------------------------- the pipeline
def _blend_step_(x: torch.Tensor, f: torch.Tensor, w_gray: torch.Tensor, w_mean: torch.Tensor,
                 any_gray: bool, any_mean: bool) -> None:
    """One jitter step of brightness / contrast / saturation for every image at once, in place.

    All three are ``clamp(f x + (1 - f) y)`` with y = 0 (brightness), the mean grey level
    (contrast) or the grayscale image (saturation): y = w_gray * gray + w_mean * mean, with
    per-image 0/1 weights; images running another op (or none) this step have f = 1.
    """
    view = (-1, 1, 1, 1)
    y = None
    if any_gray:
        y = _gray(x).mul_(w_gray.view(view))
    if any_mean:
        luma = torch.tensor(_LUMA, dtype=x.dtype, device=x.device)
        mean = (x.mean(dim=(2, 3)) @ luma).mul_(w_mean).view(view)
        y = mean if y is None else y.add_(mean)
    if y is None:
        x.mul_(f.view(view))
    else:
        x.sub_(y).mul_(f.view(view)).add_(y)
    x.clamp_(0, 1)


def apply_photometric(
    x: torch.Tensor, params: torch.Tensor, inplace: bool = False, max_sigma: float = 2.0
) -> torch.Tensor:
    """Apply per-image photometric augmentation.

    Every image goes through: colour jitter (if on) = brightness, contrast, saturation and hue
    in its own order, then grayscale (if on), then blur (if on). Batched with few ops: the
    images are sorted by the step at which they run hue, so each jitter step is one fused
    brightness/contrast/saturation blend over all images plus one hue call on a contiguous
    slice; they are then re-sorted so the grayscale and blur images are contiguous.

    Args:
        x: (N, 3, H, W) float RGB in [0, 1].
        params: (N, NUM_PARAMS) rows from :func:`sample_photometric_params`.
        inplace: allow overwriting ``x`` (when it is float32) instead of copying it.
        max_sigma: the largest blur sigma expected (only sets the kernel buffer size).

    Returns:
        (N, 3, H, W) float32 RGB in [0, 1].
    """
    n = x.shape[0]
    x = x.to(torch.float32, copy=not inplace)
    if n == 0:
        return x
    params = params.to(x.device, torch.float32)
    jitter = params[:, JITTER_ON] > 0.5
    order = params[:, ORDER].long()  # (N, 4) op of every step
    hue_step = torch.where(jitter, (order == 3).long().argmax(dim=1), 4)
    perm = torch.argsort(hue_step, stable=True)
    params, jitter, order = params[perm], jitter[perm], order[perm]
    # Per-step blend factors (1 = untouched) and which kinds of blend appear.
    factors = torch.ones(4, n, device=x.device)
    w_gray = torch.zeros(4, n, device=x.device)
    w_mean = torch.zeros(4, n, device=x.device)
    for op, col in ((0, BRIGHTNESS), (1, CONTRAST), (2, SATURATION)):
        sel = (order.t() == op) & jitter  # (4, N)
        factors = torch.where(sel, params[:, col], factors)
        if op == 1:
            w_mean = sel.float()
        if op == 2:
            w_gray = sel.float()
    gray_on = params[:, GRAY_ON] > 0.5
    blur_on = params[:, BLUR_ON] > 0.5
    # Final stage order: [blur + gray][blur][gray][neither].
    key2 = 2 * (~blur_on).long() + (~gray_on).long()
    perm2 = torch.argsort(key2, stable=True)
    # One host sync for every count and flag.
    stats = torch.cat(
        [
            torch.bincount(hue_step[perm], minlength=5)[:4],
            torch.bincount(key2, minlength=4),
            (factors != 1).any(dim=1).long(),
            (w_gray > 0).any(dim=1).long(),
            (w_mean > 0).any(dim=1).long(),
        ]
    ).tolist()
    hue_counts, key2_counts = stats[:4], stats[4:8]
    any_blend, any_gray, any_mean = stats[8:12], stats[12:16], stats[16:20]

    identity = torch.arange(n, device=x.device)
    if not torch.equal(perm, identity):
        x = x.index_select(0, perm)
    start = 0
    for step in range(4):
        if any_blend[step]:
            _blend_step_(x, factors[step], w_gray[step], w_mean[step], any_gray[step],
                         any_mean[step])
        count = hue_counts[step]
        if count:
            seg = x[start : start + count]
            adjust_hue(seg, params[start : start + count, HUE], out=seg)
            start += count

    if not torch.equal(perm2, identity):
        x, params, perm = x.index_select(0, perm2), params[perm2], perm[perm2]
    c_bg, c_b, c_g = key2_counts[0], key2_counts[1], key2_counts[2]
    for lo, hi in ((0, c_bg), (c_bg + c_b, c_bg + c_b + c_g)):
        if hi > lo:
            seg = x[lo:hi]
            seg.copy_(_gray(seg).expand(-1, 3, -1, -1))
    if c_bg + c_b:
        seg = x[: c_bg + c_b]
        seg.copy_(gaussian_blur(seg, params[: c_bg + c_b, SIGMA], max_sigma))
    if not torch.equal(perm, identity):
        x = x.index_select(0, torch.argsort(perm))
    return x
