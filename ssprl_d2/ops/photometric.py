"""SwAV/SS-PRL photometric augmentation with per-crop parameters, batched: the pipeline.

Parameters are drawn per crop on the CPU by the mapper (:func:`sample_photometric_params`,
:mod:`.photometric_params`) and applied by :func:`apply_photometric`, either in the loader (on
the crops of one image, batched per crop size) or on the training device (on all crops of a
batch). Both paths use the same functions, so they follow the same distribution as the
reference torchvision/PIL recipe. The single ops are in :mod:`.color` and :mod:`.blur`; this
module re-exports them with the sampler (``__all__``), so callers need one import.

Speed (this runs per crop for every image): the per-crop parameters are turned into a plan on
the host (numpy); the batch is then reordered once per stage so that each op runs once, on a
contiguous slice of the images that need it, with in-place ops and few memory passes. The
pixel work is memory-bound, so every pass counts.
"""
from typing import List, NamedTuple, Optional

import numpy as np
import torch

from .blur import blur_radius, gaussian_blur, host_gaussian_kernels, separable_blur
from .color import (
    _gray,
    adjust_brightness_,
    adjust_contrast_,
    adjust_hue,
    adjust_saturation_,
)
from .photometric_params import (
    BLUR_ON,
    BRIGHTNESS,
    CONTRAST,
    GRAY_ON,
    HUE,
    JITTER_ON,
    NUM_PARAMS,
    ORDER,
    SATURATION,
    SIGMA,
    sample_photometric_params,
)

__all__ = [
    "BLUR_ON", "BRIGHTNESS", "CONTRAST", "GRAY_ON", "HUE", "JITTER_ON", "NUM_PARAMS", "ORDER",
    "SATURATION", "SIGMA", "CPU_CHUNK_ELEMENTS", "adjust_brightness_", "adjust_contrast_",
    "adjust_hue", "adjust_saturation_", "apply_photometric", "gaussian_blur",
    "sample_photometric_params", "truncate_to_uint8",
]  # fmt: skip

# On the CPU, batches are processed in chunks of at most about this many values (~1.4 MB of
# float32): the ops are memory-bound and run faster on a working set that stays in the caches.
CPU_CHUNK_ELEMENTS = 360_000


class _Stage(NamedTuple):
    sort: Optional[np.ndarray]  # gather before the stage (None: order unchanged)
    order: np.ndarray  # original index of every position during the stage
    bounds: List[int]  # positions [bounds[k], bounds[k + 1]) run op k


def _plan(params: np.ndarray) -> List[_Stage]:
    """Host-side plan (cheap): five stages, the images sorted by their op at each.

    Stages 0-3 are the jitter steps (op 0 brightness, 1 contrast, 2 saturation, 3 hue,
    4 none); stage 4 orders the images [blur + gray, blur, gray, none] (0..3). Plain Python
    on the few rows of a batch (numpy's per-call cost dominates at this size).
    """
    order = params[:, ORDER].astype(np.int64)
    order[params[:, JITTER_ON] <= 0.5] = 4
    last = 2 * (params[:, BLUR_ON] <= 0.5) + (params[:, GRAY_ON] <= 0.5)
    keys = order.T.tolist() + [last.tolist()]
    n = params.shape[0]
    identity = list(range(n))
    current = identity
    stages = []
    for key in keys:
        key = [key[i] for i in current]
        sort = sorted(identity, key=key.__getitem__)  # stable
        if sort == identity:
            sort_array = None
        else:
            current = [current[i] for i in sort]
            key = [key[i] for i in sort]
            sort_array = np.array(sort)
        bounds = [0] * 6
        for k in key:
            bounds[k + 1] += 1
        for k in range(5):
            bounds[k + 1] += bounds[k]
        stages.append(_Stage(sort_array, np.array(current), bounds))
    return stages


def _column(p, col: int) -> torch.Tensor:
    """Column ``col`` of parameter rows ``p`` (a tensor, or a numpy array on the CPU)."""
    if isinstance(p, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(p[:, col]))
    return p[:, col]


def _adjust_(x: torch.Tensor, op: int, p, bound: float) -> None:
    """Jitter op ``op`` on x in place (p: the images' parameter rows, tensor or numpy)."""
    if op == 0:
        adjust_brightness_(x, _column(p, BRIGHTNESS), bound)
    elif op == 1:
        adjust_contrast_(x, _column(p, CONTRAST), bound)
    elif op == 2:
        adjust_saturation_(x, _column(p, SATURATION), bound)
    else:
        adjust_hue(x, _column(p, HUE), out=x)


def _apply(x: torch.Tensor, params: torch.Tensor, host: np.ndarray, bound: float, owned: bool):
    """The five stages; every stage first gathers the images in its order (one
    ``index_select``) so that each op runs once, in place, on a contiguous slice. uint8 input
    is gathered first, then converted. Returns x in the last stage's order and that order."""
    dev = x.device
    stages = _plan(host)
    for s, stage in enumerate(stages):
        if stage.sort is not None:
            x, owned = x.index_select(0, torch.from_numpy(stage.sort).to(dev)), True
        if x.dtype != torch.float32:
            x, owned = x.to(torch.float32), True
        elif not owned:
            x, owned = x.clone(), True
        b = stage.bounds
        if s < 4:
            # The images' parameter rows; on the CPU straight from the host copy (numpy),
            # which saves a few tiny tensor ops per call.
            if dev.type == "cpu":
                p = host[stage.order]
            else:
                p = params[torch.from_numpy(stage.order).to(dev)]
            for op in range(4):
                if b[op + 1] > b[op]:
                    _adjust_(x[b[op] : b[op + 1]], op, p[b[op] : b[op + 1]], bound)
            continue
        # [blur + gray][blur][gray][none]. Grey images are blurred as one channel.
        sigma = host[stage.order, SIGMA]
        if b[1] > b[0]:
            x[: b[1]] = _blur_host_sigma(_gray(x[: b[1]]), sigma[: b[1]])
        if b[2] > b[1]:
            x[b[1] : b[2]] = _blur_host_sigma(x[b[1] : b[2]], sigma[b[1] : b[2]])
        if b[3] > b[2]:
            x[b[2] : b[3]] = _gray(x[b[2] : b[3]])
    return x, stages[-1].order


def _blur_host_sigma(x: torch.Tensor, sigma: np.ndarray) -> torch.Tensor:
    """:func:`gaussian_blur` of (N, C, H, W) float ``x`` with host (numpy) sigmas."""
    radius = blur_radius(float(sigma.max()))
    k = torch.from_numpy(host_gaussian_kernels(sigma, radius)).to(x.device)
    pad_mode = "reflect" if min(x.shape[-2:]) > radius else "replicate"
    return separable_blur(x, k, radius, pad_mode)


def apply_photometric(x: torch.Tensor, params: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Apply per-image photometric augmentation.

    Every image goes through: colour jitter (if on) = brightness, contrast, saturation and hue
    in its own order, then grayscale (if on), then blur (if on). On the CPU, large batches are
    processed in chunks of about :data:`CPU_CHUNK_ELEMENTS` values (the ops are memory-bound;
    a working set that stays in the caches is faster).

    Args:
        x: (N, 3, H, W) float RGB in [0, 1], or uint8 RGB in [0, 255].
        params: (N, NUM_PARAMS) rows from :func:`sample_photometric_params`.
        inplace: allow overwriting a float32 ``x`` instead of copying it.

    Returns:
        The augmented images, float32 in [0, 1] for float input, uint8 (rounded) for uint8.
    """
    n = x.shape[0]
    chunks = -(-x.numel() // CPU_CHUNK_ELEMENTS) if x.device.type == "cpu" else 1
    if chunks <= 1 or n <= 1:
        return _apply_photometric(x, params, inplace)
    bounds = np.linspace(0, n, min(n, chunks) + 1).round().astype(int).tolist()
    dtype = torch.uint8 if x.dtype == torch.uint8 else torch.float32
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    for lo, hi in zip(bounds, bounds[1:]):
        _apply_photometric(x[lo:hi], params[lo:hi], inplace, out=out[lo:hi])
    return out


def _apply_photometric(
    x: torch.Tensor, params: torch.Tensor, inplace: bool, out: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """One chunk of :func:`apply_photometric`; the result goes into ``out`` when given."""
    as_uint8 = x.dtype == torch.uint8
    if out is not None and x.shape[0] == 0:
        return out
    host = params.detach().to("cpu", torch.float32).numpy()
    if x.shape[0] == 0:
        return x.clone() if as_uint8 else x.to(torch.float32, copy=not inplace)
    if params.device != x.device or params.dtype != torch.float32:
        params = params.to(x.device, torch.float32)
    bound = 255.0 if as_uint8 else 1.0
    # No autograd bookkeeping for the many small ops (a sizeable share of the loader's cost);
    # the result is made outside inference mode, so it is an ordinary tensor.
    with torch.inference_mode():
        if torch.is_autocast_enabled(x.device.type):
            # Under autocast conv2d (the blur) would run in half precision: keep float32.
            with torch.autocast(device_type=x.device.type, enabled=False):
                x, order = _apply(x, params, host, bound, inplace)
        else:
            x, order = _apply(x, params, host, bound, inplace)
        if as_uint8:
            x.add_(0.5)  # then truncation rounds half up (values are in [0, 255])
    # Outside inference mode, the next out-of-place op (rounding, restoring the input order)
    # gives an ordinary tensor; a copy is needed only when there is none.
    with torch.no_grad():
        if as_uint8:
            x = truncate_to_uint8(x)
        if (order[1:] > order[:-1]).all():
            if out is not None:
                return out.copy_(x)
            return x.clone() if x.is_inference() else x
        # Back to the input order (straight into the caller's buffer when given; index_copy_
        # would be the natural op but is ~20x slower on the CPU).
        inverse = torch.from_numpy(np.argsort(order)).to(x.device)
        if out is not None:
            return torch.index_select(x, 0, inverse, out=out)
        return x.index_select(0, inverse)


def truncate_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float values in [0, 256) -> uint8, truncated (``x.to(torch.uint8)``).

    Goes through int16: PyTorch's direct float -> uint8 conversion is not vectorised on the
    CPU and costs ~4x more than the two conversions.
    """
    return x.to(torch.int16).to(torch.uint8)
