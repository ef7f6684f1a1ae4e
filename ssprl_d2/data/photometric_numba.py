"""Loader-side photometric augmentation as one compiled pass per crop (numba).

Same operations, order and parameters as :func:`ssprl_d2.ops.photometric.apply_photometric`
(colour jitter in the crop's own order, then grayscale, then Gaussian blur; see that module),
for uint8 crops on the CPU. Where the torch implementation makes ~60 memory passes over a batch
(one per elementary op, each image reordered at every stage), this one takes each crop once
into a cache-resident float buffer and runs every op of that crop as a single fused loop over
its pixels: one pass per jitter op, one for grayscale, two for the blur, one for the rounding.

Results equal the torch implementation's up to float rounding (a few crops' pixels may differ
by one grey level after the final rounding; tests/test_photometric_equivalence.py). The torch
implementation remains the one for the training device (``INPUT.SSPRL.PHOTOMETRIC_ON model``)
and the fallback when numba is missing (``INPUT.SSPRL.LOADER_KERNEL torch``).
"""
import logging
import math
from typing import Optional

import numpy as np
import torch

from ssprl_d2.ops.color import LUMA
from ssprl_d2.ops.photometric_params import (
    BLUR_ON,
    BRIGHTNESS,
    CONTRAST,
    GRAY_ON,
    HUE,
    JITTER_ON,
    ORDER,
    SATURATION,
    SIGMA,
    sample_photometric_params,
)

logger = logging.getLogger(__name__)

try:  # optional: without numba, LOADER_KERNEL numba raises a clear error (torch still works)
    import numba

    NUMBA_AVAILABLE = True
except ImportError:  # pragma: no cover - numba is a declared dependency
    numba = None
    NUMBA_AVAILABLE = False


def _njit(fn):
    """numba.njit with the machine code cached on disk (next to this file, else in numba's
    user-wide cache directory); without a writable cache location, compiled per process."""
    if not NUMBA_AVAILABLE:
        return fn
    options = dict(nogil=True, error_model="numpy", fastmath=True)
    try:
        return numba.njit(cache=True, **options)(fn)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        logger.warning("numba cannot cache %s here; it is compiled in every process", fn.__name__)
        return numba.njit(**options)(fn)


_LR, _LG, _LB = LUMA  # ITU-R 601 luma
_ORDER0 = ORDER.start


@_njit
def _brightness(buf, f, npix):
    f32 = np.float32(f)
    for c in range(3):
        for j in range(npix):
            buf[c, j] = min(max(buf[c, j] * f32, np.float32(0.0)), np.float32(255.0))


@_njit
def _contrast(buf, f, npix):
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    for j in range(npix):
        s0 += buf[0, j]
        s1 += buf[1, j]
        s2 += buf[2, j]
    mean = (_LR * s0 + _LG * s1 + _LB * s2) / npix
    add = np.float32((1.0 - f) * mean)
    f32 = np.float32(f)
    for c in range(3):
        for j in range(npix):
            buf[c, j] = min(max(buf[c, j] * f32 + add, np.float32(0.0)), np.float32(255.0))


@_njit
def _saturation(buf, f, npix):
    f32 = np.float32(f)
    g32 = np.float32(1.0 - f)
    for j in range(npix):
        r = buf[0, j]
        g = buf[1, j]
        b = buf[2, j]
        gray = (np.float32(_LR) * r + np.float32(_LG) * g + np.float32(_LB) * b) * g32
        buf[0, j] = min(max(r * f32 + gray, np.float32(0.0)), np.float32(255.0))
        buf[1, j] = min(max(g * f32 + gray, np.float32(0.0)), np.float32(255.0))
        buf[2, j] = min(max(b * f32 + gray, np.float32(0.0)), np.float32(255.0))


@_njit
def _hue(buf, shift, npix):
    """HSV hue rotation by ``shift`` turns (torchvision's rgb -> hsv -> rgb, without
    materialising HSV: see :func:`ssprl_d2.ops.color.adjust_hue`)."""
    six_shift = np.float32(6.0 * shift)
    for j in range(npix):
        r = buf[0, j]
        g = buf[1, j]
        b = buf[2, j]
        maxc = max(r, max(g, b))
        minc = min(r, min(g, b))
        d = maxc - minc
        # Sextant formulas; red wins ties, then green (torchvision's precedence).
        h6 = r - g + np.float32(4.0) * d
        h6 = b - r + np.float32(2.0) * d if maxc == g else h6
        h6 = g - b if maxc == r else h6
        h6 = h6 / max(d, np.float32(1e-12)) + six_shift
        h6 = h6 - np.floor(h6 * np.float32(1.0 / 6.0)) * np.float32(6.0)
        top = maxc + d
        qr = min(max(abs(abs(h6 - np.float32(3.0)) - np.float32(3.0)), np.float32(1.0)),
                 np.float32(2.0))
        qg = min(max(abs(abs(h6 - np.float32(5.0)) - np.float32(3.0)), np.float32(1.0)),
                 np.float32(2.0))
        qb = min(max(abs(abs(h6 - np.float32(1.0)) - np.float32(3.0)), np.float32(1.0)),
                 np.float32(2.0))
        buf[0, j] = top - d * qr
        buf[1, j] = top - d * qg
        buf[2, j] = top - d * qb


@_njit
def _to_gray(buf, npix):
    for j in range(npix):
        buf[0, j] = (np.float32(_LR) * buf[0, j] + np.float32(_LG) * buf[1, j]
                     + np.float32(_LB) * buf[2, j])


@_njit
def _pad_index(i, n, reflect):
    """Index ``i`` of a length-``n`` axis with reflect padding (``reflect``) or replicate."""
    if reflect:
        if i < 0:
            i = -i
        if i >= n:
            i = 2 * (n - 1) - i
    return min(max(i, 0), n - 1)


@_njit
def _blur(buf, channels, h, w, sigma, row, tmp):
    """Separable Gaussian blur of the first ``channels`` planes of ``buf`` (h x w each), kernel
    radius ceil(3 sigma), taps beyond it zero, reflect padding (replicate if the image is not
    larger than the radius); ``row`` and ``tmp`` are scratch buffers."""
    radius = int(math.ceil(3.0 * sigma))
    ks = 2 * radius + 1
    k = np.empty(ks, np.float64)
    total = 0.0
    for t in range(ks):
        v = math.exp(-0.5 * ((t - radius) / sigma) ** 2)
        k[t] = v
        total += v
    k32 = np.empty(ks, np.float32)
    for t in range(ks):
        k32[t] = k[t] / total
    reflect = min(h, w) > radius
    for c in range(channels):
        # Horizontal: pad each row, then out[x] = sum_t k[t] row[x + t].
        for y in range(h):
            base = y * w
            src = buf[c, base : base + w]
            for x in range(w):
                row[x + radius] = src[x]
            for x in range(radius):  # the padding
                row[x] = src[_pad_index(x - radius, w, reflect)]
                row[w + radius + x] = src[_pad_index(w + x, w, reflect)]
            out_row = tmp[base : base + w]
            k0 = k32[0]
            for x in range(w):
                out_row[x] = k0 * row[x]
            for t in range(1, ks):
                kt = k32[t]
                src_row = row[t : t + w]
                for x in range(w):
                    out_row[x] += kt * src_row[x]
        # Vertical: out row y = sum_t k[t] tmp row (y + t - radius), reflected.
        for y in range(h):
            base = y * w
            dst = buf[c, base : base + w]
            for x in range(w):
                dst[x] = 0.0
            for t in range(ks):
                yy = _pad_index(y + t - radius, h, reflect)
                src_row = tmp[yy * w : yy * w + w]
                kt = k32[t]
                for x in range(w):
                    dst[x] += kt * src_row[x]


@_njit
def _photometric_block(x, params, h, w, out):
    """x, out: (N, 3, H * W) uint8 (out may be x); params: (N, NUM_PARAMS) float32."""
    n = x.shape[0]
    npix = h * w
    buf = np.empty((3, npix), np.float32)
    tmp = np.empty(npix, np.float32)
    row = np.empty(w + 2 * int(math.ceil(3.0 * max(1e-6, _max_sigma(params)))) + 2, np.float32)
    for i in range(n):
        for c in range(3):
            for j in range(npix):
                buf[c, j] = x[i, c, j]
        if params[i, JITTER_ON] > 0.5:
            for step in range(4):
                op = int(params[i, _ORDER0 + step] + 0.5)
                if op == 0:
                    _brightness(buf, params[i, BRIGHTNESS], npix)
                elif op == 1:
                    _contrast(buf, params[i, CONTRAST], npix)
                elif op == 2:
                    _saturation(buf, params[i, SATURATION], npix)
                else:
                    _hue(buf, params[i, HUE], npix)
        channels = 3
        if params[i, GRAY_ON] > 0.5:
            _to_gray(buf, npix)
            channels = 1
        if params[i, BLUR_ON] > 0.5:
            _blur(buf, channels, h, w, params[i, SIGMA], row, tmp)
        for c in range(3):
            src = c if channels == 3 else 0
            for j in range(npix):
                out[i, c, j] = np.uint8(buf[src, j] + np.float32(0.5))
    return out


@_njit
def _max_sigma(params):
    m = 0.0
    for i in range(params.shape[0]):
        if params[i, BLUR_ON] > 0.5:
            m = max(m, params[i, SIGMA])
    return m


def apply_photometric_numba(
    x: torch.Tensor, params: torch.Tensor, out: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """:func:`ssprl_d2.ops.photometric.apply_photometric` of (N, 3, H, W) uint8 CPU crops.

    Args:
        x: (N, 3, H, W) uint8 RGB (any strides; made contiguous).
        params: (N, NUM_PARAMS) rows from :func:`~ssprl_d2.ops.photometric_params.
            sample_photometric_params`.
        out: optional (N, 3, H, W) contiguous uint8 buffer for the result (may be ``x``).

    Returns:
        (N, 3, H, W) uint8, rounded to nearest.
    """
    if not NUMBA_AVAILABLE:
        raise RuntimeError(
            "INPUT.SSPRL.LOADER_KERNEL numba needs the numba package: `pip install numba`, "
            "or set INPUT.SSPRL.LOADER_KERNEL torch"
        )
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3 or x.device.type != "cpu":
        raise ValueError(f"expected (N, 3, H, W) uint8 CPU crops, got {tuple(x.shape)} "
                         f"{x.dtype} on {x.device}")
    n, _, h, w = x.shape
    x = x.contiguous()
    if out is None:
        out = torch.empty_like(x)
    elif out.shape != x.shape or out.dtype != torch.uint8 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous uint8 tensor of shape {tuple(x.shape)}, "
                         f"got {tuple(out.shape)} {out.dtype}")
    if n == 0:
        return out
    p = params.detach().to("cpu", torch.float32).contiguous().numpy()
    _photometric_block(x.view(n, 3, h * w).numpy(), p, h, w, out.view(n, 3, h * w).numpy())
    return out


def warm_up_numba_kernel() -> None:
    """Compile the kernel (or load it from numba's on-disk cache) now, on a tiny input; raises
    the clear error of :func:`apply_photometric_numba` when numba is missing."""
    g = torch.Generator().manual_seed(0)
    apply_photometric_numba(
        torch.zeros(2, 3, 8, 8, dtype=torch.uint8), sample_photometric_params(2, generator=g)
    )
