"""Crop geometry and resampling of the pre-training views: RandomResizedCrop boxes, resized
crops (antialiased bilinear interpolation or ``roi_align``) and flips.

Boxes are ``(top, left, height, width)`` in image pixels. :func:`sample_resized_crop_box` is
the one RandomResizedCrop rule of the project (the pyramid mapper's crops and the classifier's
:class:`ssprl_d2.data.classification_loader.RandomResizedCrop`); it draws from the
``torch.Generator`` it is given (torch's global RNG when None).
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from ssprl_d2.ops import truncate_to_uint8

Box = Tuple[int, int, int, int]  # top, left, height, width


def _randint(lo: int, hi: int, g: Optional[torch.Generator]) -> int:
    """Integer in [lo, hi] inclusive."""
    return int(torch.randint(lo, hi + 1, (), generator=g))


def sample_resized_crop_box(
    height: int,
    width: int,
    scale: Sequence[float],
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    generator: Optional[torch.Generator] = None,
) -> Box:
    """RandomResizedCrop geometry (Szegedy et al.; the torchvision rule): area fraction
    ~ U(scale), log aspect ratio ~ U(log ratio), 10 attempts, then a centred fallback."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        # One call for both draws (the same stream as two scalar draws).
        u_area, u_ratio = torch.rand(2, generator=generator).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return _randint(0, height - h, generator), _randint(0, width - w, generator), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def as_channels_last(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) -> (1, 3, H, W) in channels-last memory (free for an HWC-backed tensor)."""
    return image.unsqueeze(0).contiguous(memory_format=torch.channels_last)


def _resize_box(image_cl: torch.Tensor, box: Box, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of ``box`` of a (1, 3, H, W) image to (1, 3, size, size)
    (contiguous; see :func:`resize_box_channels_last`)."""
    return resize_box_channels_last(image_cl, box, size).contiguous()


def resize_box_channels_last(image_cl: torch.Tensor, box: Box, size: int) -> torch.Tensor:
    """The resize of :func:`_resize_box` in the kernel's channels-last memory (callers that
    copy the result anyway skip a copy).

    uint8 input takes PyTorch's fixed-point uint8 kernel (the PIL algorithm), float input the
    float kernel; both match ``PIL.Image.resize(..., BILINEAR)`` up to rounding.
    """
    top, left, h, w = box
    crop = image_cl[:, :, top : top + h, left : left + w]
    out = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                        antialias=True)
    if out.dtype != torch.uint8:
        out = round_to_uint8_(out)
    return out


def resized_crop(image: torch.Tensor, box: Box, size: int) -> torch.Tensor:
    """Crop ``box`` of a (3, H, W) uint8 image and resize it to size x size (antialiased
    bilinear, like PIL's resize). Returns (3, size, size) uint8."""
    return _resize_box(as_channels_last(image), box, size)[0]


def box_to_roi(box: Box) -> List[float]:
    """(top, left, h, w) -> roi_align's (x1, y1, x2, y2) in continuous pixel coordinates."""
    top, left, h, w = box
    return [float(left), float(top), float(left + w), float(top + h)]


def roi_resample(image_float: torch.Tensor, rois: torch.Tensor, size: int) -> torch.Tensor:
    """All ``rois`` ((n, 4) x1, y1, x2, y2) of a (3, H, W) float image resampled to ``size``
    in one ``roi_align`` call (adaptive sampling: anti-aliased). Returns (n, 3, size, size)
    float on the 0-255 scale."""
    rois = torch.cat([rois.new_zeros(rois.shape[0], 1), rois], dim=1)
    return roi_align(image_float.unsqueeze(0), rois, (size, size), 1.0, -1, aligned=True)


def resized_crops_roi_align(image: torch.Tensor, boxes: List[Box], size: int) -> torch.Tensor:
    """All ``boxes`` of one (3, H, W) uint8 image resized to ``size`` in one batched
    ``roi_align`` call. Returns (n, 3, size, size) uint8."""
    rois = torch.tensor([box_to_roi(b) for b in boxes], dtype=torch.float32)
    return round_to_uint8_(roi_resample(image.float().contiguous(), rois, size))


def flip_selected_(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Mirror (in place) the images of (n, C, H, W) ``x`` selected by the bool mask ``flips``."""
    for i in flips.nonzero().flatten().tolist():
        x[i] = x[i].flip(-1)
    return x


def round_to_uint8_(x: torch.Tensor) -> torch.Tensor:
    """float 0-255 scale -> uint8, rounded to nearest and clamped (``x`` is modified)."""
    return truncate_to_uint8(x.round_().clamp_(0, 255))
