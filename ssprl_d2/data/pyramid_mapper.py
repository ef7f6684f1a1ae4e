"""The SS-PRL pyramid dataset mapper: scale-0 multi-crop views and two pyramid views per scale.

Geometry (crop boxes, flips, patch grid) is drawn per crop and applied on uint8 tensors; the
photometric parameters are drawn per crop as well and either applied here (``PHOTOMETRIC_ON
loader``) or shipped to the model, which applies them batched on the training device.
"""
import copy
import logging
import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torchvision.ops import roi_align

from .photometric import apply_photometric, sample_photometric_params

logger = logging.getLogger(__name__)

Box = Tuple[int, int, int, int]  # top, left, height, width


def _uniform(lo: float, hi: float, g: Optional[torch.Generator]) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


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
        target = area * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(log_lo, log_hi, generator))
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


def resized_crop(image: torch.Tensor, box: Box, size: int) -> torch.Tensor:
    """Crop ``box`` of a (3, H, W) uint8 image and resize it to size x size (antialiased
    bilinear, like PIL's resize when downscaling). Returns uint8."""
    top, left, h, w = box
    crop = image[:, top : top + h, left : left + w].unsqueeze(0).float()
    out = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                        antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)[0]


def resized_crops_roi_align(image: torch.Tensor, boxes: List[Box], size: int) -> torch.Tensor:
    """All ``boxes`` of one image resized to ``size`` in one batched ``roi_align`` call.

    ``sampling_ratio=-1`` averages ceil(box / size) samples per output pixel, which
    anti-aliases when downscaling. Returns (n, 3, size, size) uint8.
    """
    rois = torch.tensor(
        [[0, left, top, left + w, top + h] for top, left, h, w in boxes], dtype=torch.float32
    )
    out = roi_align(image.unsqueeze(0).float(), rois, (size, size), 1.0, -1, aligned=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


class PyramidDatasetMapper:
    """Turn one dataset dict into the SS-PRL views of its image (tensors only).

    Output dict keys: "crops" (list of (3, s, s) uint8, scale 0), "patches" (one (2, M_s, 3, p,
    p) uint8 tensor per pyramid scale; patch m of view 0 and of view 1 come from the same grid
    cell), optionally "photometric" ((n_crops + sum_s 2 M_s, P) float parameters in the same
    order: crops, then scale 1 view 0 patches, view 1 patches, scale 2 ...), plus "image_id".
    Returns None when the image cannot be read (the loader then takes another image).
    """

    @configurable
    def __init__(
        self,
        *,
        crop_sizes: Sequence[int],
        num_crops: Sequence[int],
        min_scales: Sequence[float],
        max_scales: Sequence[float],
        grids: Sequence[int],
        pyramid_resize: Sequence[int],
        pyramid_scales: Sequence[Sequence[float]],
        patch_sizes: Sequence[int],
        shared_pyramid_crop: bool = True,
        shuffle_patches: bool = True,
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        flip_prob: float = 0.5,
        color_jitter: Sequence[float] = (0.8, 0.8, 0.8, 0.2),
        color_jitter_prob: float = 0.8,
        grayscale_prob: float = 0.2,
        blur_prob: float = 0.5,
        blur_sigma: Sequence[float] = (0.1, 2.0),
        photometric_on: str = "model",
        resample: str = "interpolate",
        image_format: str = "RGB",
    ):
        self.crop_sizes = list(crop_sizes)
        self.num_crops = list(num_crops)
        self.crop_scales = list(zip(min_scales, max_scales))
        self.grids = list(grids)
        self.pyramid_resize = list(pyramid_resize)
        self.pyramid_scales = [tuple(s) for s in pyramid_scales]
        self.patch_sizes = list(patch_sizes)
        self.shared_pyramid_crop = shared_pyramid_crop
        self.shuffle_patches = shuffle_patches
        self.ratio = tuple(ratio)
        self.flip_prob = flip_prob
        self.photo_kwargs = dict(
            jitter=tuple(color_jitter),
            jitter_prob=color_jitter_prob,
            grayscale_prob=grayscale_prob,
            blur_prob=blur_prob,
            blur_sigma=tuple(blur_sigma),
        )
        self.blur_max = float(blur_sigma[1])
        self.photometric_on = photometric_on
        self.resample = resample
        self.image_format = image_format

    @classmethod
    def from_config(cls, cfg):
        s = cfg.INPUT.SSPRL
        return {
            "crop_sizes": list(s.CROP_SIZES),
            "num_crops": list(s.NUM_CROPS),
            "min_scales": list(s.MIN_SCALES),
            "max_scales": list(s.MAX_SCALES),
            "grids": list(s.GRIDS),
            "pyramid_resize": list(s.PYRAMID_RESIZE),
            "pyramid_scales": [list(x) for x in s.PYRAMID_SCALES],
            "patch_sizes": list(s.PATCH_SIZES),
            "shared_pyramid_crop": s.SHARED_PYRAMID_CROP,
            "shuffle_patches": s.SHUFFLE_PATCHES,
            "ratio": list(s.RATIO),
            "flip_prob": s.FLIP_PROB,
            "color_jitter": list(s.COLOR_JITTER),
            "color_jitter_prob": s.COLOR_JITTER_PROB,
            "grayscale_prob": s.GRAYSCALE_PROB,
            "blur_prob": s.BLUR_PROB,
            "blur_sigma": list(s.BLUR_SIGMA),
            "photometric_on": s.PHOTOMETRIC_ON,
            "resample": s.RESAMPLE,
            "image_format": cfg.INPUT.FORMAT if cfg.INPUT.FORMAT == "RGB" else "RGB",
        }

    @property
    def num_outputs(self) -> int:
        return sum(self.num_crops) + sum(2 * g * g for g in self.grids)

    # ------------------------------------------------------------------ geometry
    def _resize_boxes(self, image: torch.Tensor, boxes: List[Box], size: int) -> torch.Tensor:
        if self.resample == "roi_align":
            return resized_crops_roi_align(image, boxes, size)
        return torch.stack([resized_crop(image, b, size) for b in boxes])

    def _flip(self, crops: torch.Tensor, g: Optional[torch.Generator]) -> torch.Tensor:
        flips = torch.rand(crops.shape[0], generator=g) < self.flip_prob
        if flips.any():
            crops = crops.clone()
            crops[flips] = crops[flips].flip(-1)
        return crops

    def _pyramid_views(self, image: torch.Tensor, s: int, g) -> torch.Tensor:
        """(2, M, 3, p, p) uint8 patches of pyramid scale index ``s`` (0-based)."""
        _, h, w = image.shape
        grid, size, patch = self.grids[s], self.pyramid_resize[s], self.patch_sizes[s]
        cell = size // grid
        box = sample_resized_crop_box(h, w, self.pyramid_scales[s], self.ratio, g)
        views = []
        perm = torch.randperm(grid * grid, generator=g) if self.shuffle_patches else None
        for v in range(2):
            if v == 1 and not self.shared_pyramid_crop:
                box = sample_resized_crop_box(h, w, self.pyramid_scales[s], self.ratio, g)
            if v == 0 or not self.shared_pyramid_crop:
                resized = self._resize_boxes(image, [box], size)[0]  # (3, size, size)
            patches = []
            for r in range(grid):
                for c in range(grid):
                    top = r * cell + _randint(0, cell - patch, g)
                    left = c * cell + _randint(0, cell - patch, g)
                    patches.append(resized[:, top : top + patch, left : left + patch])
            patches = self._flip(torch.stack(patches), g)  # (M, 3, p, p)
            if perm is not None:
                patches = patches[perm]
            views.append(patches)
        return torch.stack(views)

    # ------------------------------------------------------------------ main
    def map_image(self, image: torch.Tensor, generator: Optional[torch.Generator] = None) -> dict:
        """Views of a (3, H, W) uint8 RGB image. See the class docstring."""
        g = generator
        crops: List[torch.Tensor] = []
        _, h, w = image.shape
        for size, n, scale in zip(self.crop_sizes, self.num_crops, self.crop_scales):
            boxes = [sample_resized_crop_box(h, w, scale, self.ratio, g) for _ in range(n)]
            crops.extend(self._flip(self._resize_boxes(image, boxes, size), g).unbind(0))
        patches = [self._pyramid_views(image, s, g) for s in range(len(self.grids))]
        params = sample_photometric_params(self.num_outputs, generator=g, **self.photo_kwargs)
        out = {"crops": crops, "patches": patches}
        if self.photometric_on == "model":
            out["photometric"] = params
        else:
            out.update(self._apply_photometric(crops, patches, params))
        return out

    def _apply_photometric(self, crops, patches, params) -> dict:
        def run(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
            y = apply_photometric(x.float().div_(255.0), p)
            return y.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)

        new_crops, i = [], 0
        for c in crops:
            new_crops.append(run(c[None], params[i : i + 1])[0])
            i += 1
        new_patches = []
        for pv in patches:
            m = pv.shape[1]
            flat = pv.flatten(0, 1)
            new_patches.append(run(flat, params[i : i + 2 * m]).view_as(pv))
            i += 2 * m
        return {"crops": new_crops, "patches": new_patches}

    def __call__(self, dataset_dict: dict, generator: Optional[torch.Generator] = None):
        from .image_io import read_image_or_none

        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image_or_none(dataset_dict["file_name"], format=self.image_format)
        if image is None:
            return None
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        out = self.map_image(tensor, generator)
        out["image_id"] = dataset_dict.get("image_id", dataset_dict["file_name"])
        return out
