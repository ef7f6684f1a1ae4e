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

Speed (this runs per crop for every image): the per-crop parameters are turned into a plan on
the host (numpy); the batch is then reordered once per stage so that each op runs once, on a
contiguous slice of the images that need it, with in-place ops and few memory passes. The
pixel work is memory-bound, so every pass counts.
"""
import functools
import math
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

# Column layout of a parameter row.
JITTER_ON, BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3, 4
ORDER = slice(5, 9)
GRAY_ON, BLUR_ON, SIGMA = 9, 10, 11
NUM_PARAMS = 12
# ITU-R 601 luma, as torchvision's rgb_to_grayscale and PIL's "L" conversion.
_LUMA = (0.299, 0.587, 0.114)
# On the CPU, batches are processed in chunks of at most about this many values (~1.4 MB of
# float32): the ops are memory-bound and run faster on a working set that stays in the caches.
CPU_CHUNK_ELEMENTS = 360_000


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


# ---------------------------------------------------------------------------- pure colour ops
def _view(v: torch.Tensor) -> torch.Tensor:
    return (v if v.dtype == torch.float32 else v.float()).view(-1, 1, 1, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma."""
    r, g, b = x.unbind(1)
    y = r * _LUMA[0]
    y.add_(g, alpha=_LUMA[1]).add_(b, alpha=_LUMA[2])
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
    return x.mean(dim=(2, 3)) @ _constant(_LUMA, x)


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


# ---------------------------------------------------------------------------- blur
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
            return _blur(x, k, radius, pad_mode).contiguous()
    return _blur(x, k, radius, pad_mode).contiguous()


def _blur(x: torch.Tensor, k: torch.Tensor, radius: int, pad_mode: str) -> torch.Tensor:
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


# ---------------------------------------------------------------------------- the pipeline
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
    k = torch.from_numpy(_host_kernels(sigma, radius)).to(x.device)
    pad_mode = "reflect" if min(x.shape[-2:]) > radius else "replicate"
    return _blur(x, k, radius, pad_mode)


def _host_kernels(sigma: np.ndarray, radius: int) -> np.ndarray:
    """:func:`gaussian_kernels` on the host (numpy), float32."""
    t = np.arange(-radius, radius + 1, dtype=np.float64)[None]
    sigma = sigma.astype(np.float64)[:, None]
    k = np.exp(-0.5 * (t / sigma) ** 2) * (np.abs(t) <= np.ceil(3 * sigma))
    return (k / k.sum(axis=1, keepdims=True)).astype(np.float32)


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
