"""The deterministic views of an image that the prototype figures embed and draw.

Scale 0 is the center square of the image resized to the first scale-0 crop size; pyramid scale s
cuts the center square, resized to ``PYRAMID_RESIZE[s-1]``, into its g_s x g_s grid and takes the
center ``PATCH_SIZES[s-1]`` crop of every cell (:func:`grid_patches`; scale 0 is the 1 x 1 grid).
:func:`view_thumbnails` draws the same views at a fixed size.
"""
import math
from typing import List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["center_square", "grid_patches", "resize_square", "view_thumbnails"]


def center_square(image: torch.Tensor) -> torch.Tensor:
    """The largest centered square of a (3, H, W) image."""
    h, w = image.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[..., top : top + side, left : left + side]


def resize_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a (3, h, w) uint8 image to (3, size, size) uint8 (antialiased bilinear)."""
    x = image.unsqueeze(0).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8)[0]


def _cell_boxes(grid: int, resize: int, patch: int) -> List[Tuple[int, int]]:
    """(top, left) of the center ``patch`` crop of every cell, row-major."""
    cell = resize // grid
    off = (cell - patch) // 2
    return [(r * cell + off, c * cell + off) for r in range(grid) for c in range(grid)]


def grid_patches(image: torch.Tensor, grid: int, resize: int, patch: int) -> torch.Tensor:
    """Center patches of the g x g grid cells of the resized center square.

    Args:
        image: (3, H, W) uint8.
        grid: g; resize: side of the resized square; patch: side of each patch.

    Returns:
        (g * g, 3, patch, patch) uint8, row-major.
    """
    square = resize_square(center_square(image), resize)
    return torch.stack(
        [square[:, t : t + patch, l : l + patch] for t, l in _cell_boxes(grid, resize, patch)]
    )


def view_thumbnails(image: torch.Tensor, grid: int, resize: int, patch: int, size: int):
    """Pictures of the views of one image at ``size`` px, cut from a finer resize so small
    patches stay sharp. Returns (g * g, size, size, 3) uint8 numpy."""
    factor = max(1, math.ceil(size / patch))
    fine = resize_square(center_square(image), resize * factor)
    thumbs = []
    for t, l in _cell_boxes(grid, resize, patch):
        crop = fine[:, t * factor : (t + patch) * factor, l * factor : (l + patch) * factor]
        thumbs.append(resize_square(crop, size).permute(1, 2, 0).numpy())
    return np.stack(thumbs)
