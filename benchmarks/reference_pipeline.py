"""The reference SS-PRL augmentation pipeline: PIL + torchvision transforms, one crop at a time.

Benchmark-only code. It follows the release recipe, a fork of SwAV's multi-crop
dataset: every scale-0 crop is ``RandomResizedCrop -> RandomHorizontalFlip -> RandomApply(
ColorJitter(0.8, 0.8, 0.8, 0.2), p=0.8) -> RandomGrayscale(0.2) -> PIL GaussianBlur (p=0.5,
radius ~ U(0.1, 2)) -> ToTensor -> Normalize``; every pyramid scale takes ONE
``RandomResizedCrop`` of the image, cuts it into a g x g grid and, for each of the two views,
gives every cell its own ``RandomCrop`` and the same per-crop flip / colour / blur / tensor
chain. The patch order is shuffled identically for both views.

It is the yardstick of ``bench_data.py`` and of the equivalence tests; the fast pipeline is
:class:`ssprl_d2.data.pyramid_mapper.PyramidDatasetMapper`.
"""
import random
from typing import Dict, List, Sequence

import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PILRandomGaussianBlur:
    """Blur with probability ``p`` and a radius (PIL's Gaussian sigma) ~ U(lo, hi)."""

    def __init__(self, p: float = 0.5, radius_min: float = 0.1, radius_max: float = 2.0):
        self.p, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() >= self.p:
            return img
        radius = random.uniform(self.radius_min, self.radius_max)
        return img.filter(ImageFilter.GaussianBlur(radius))


def per_crop_transform(
    flip_prob: float = 0.5,
    color_jitter: Sequence[float] = (0.8, 0.8, 0.8, 0.2),
    color_jitter_prob: float = 0.8,
    grayscale_prob: float = 0.2,
    blur_prob: float = 0.5,
    blur_sigma: Sequence[float] = (0.1, 2.0),
) -> T.Compose:
    """flip -> colour distortion -> blur -> ToTensor -> Normalize (SwAV's per-crop chain)."""
    return T.Compose(
        [
            T.RandomHorizontalFlip(flip_prob),
            T.RandomApply([T.ColorJitter(*color_jitter)], p=color_jitter_prob),
            T.RandomGrayscale(grayscale_prob),
            PILRandomGaussianBlur(blur_prob, *blur_sigma),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


class ReferencePyramidPipeline:
    """PIL/torchvision implementation of the SS-PRL views of one image file.

    Args mirror ``INPUT.SSPRL`` (see :meth:`from_config`). Randomness comes from ``random`` and
    torch's global generator, as in the release.
    """

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
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        **photometric,
    ):
        self.crop_transforms = []
        for size, n, lo, hi in zip(crop_sizes, num_crops, min_scales, max_scales):
            rrc = T.RandomResizedCrop(size, scale=(lo, hi), ratio=tuple(ratio))
            self.crop_transforms += [rrc] * n
        self.pyramid_crops = [
            T.RandomResizedCrop(size, scale=tuple(sc), ratio=tuple(ratio))
            for size, sc in zip(pyramid_resize, pyramid_scales)
        ]
        self.grids = list(grids)
        self.patch_crops = [T.RandomCrop(p) for p in patch_sizes]
        self.per_crop = per_crop_transform(**photometric)

    @classmethod
    def from_config(cls, cfg) -> "ReferencePyramidPipeline":
        s = cfg.INPUT.SSPRL
        return cls(
            crop_sizes=list(s.CROP_SIZES),
            num_crops=list(s.NUM_CROPS),
            min_scales=list(s.MIN_SCALES),
            max_scales=list(s.MAX_SCALES),
            grids=list(s.GRIDS),
            pyramid_resize=list(s.PYRAMID_RESIZE),
            pyramid_scales=[list(x) for x in s.PYRAMID_SCALES],
            patch_sizes=list(s.PATCH_SIZES),
            ratio=list(s.RATIO),
            flip_prob=s.FLIP_PROB,
            color_jitter=list(s.COLOR_JITTER),
            color_jitter_prob=s.COLOR_JITTER_PROB,
            grayscale_prob=s.GRAYSCALE_PROB,
            blur_prob=s.BLUR_PROB,
            blur_sigma=list(s.BLUR_SIGMA),
        )

    def pyramid_views(self, img: Image.Image, s: int) -> torch.Tensor:
        """(2, M, 3, p, p) normalised float patches of pyramid scale index ``s``."""
        resized = self.pyramid_crops[s](img)
        grid = self.grids[s]
        cell = resized.width // grid
        cells = [
            resized.crop((c * cell, r * cell, (c + 1) * cell, (r + 1) * cell))
            for r in range(grid)
            for c in range(grid)
        ]
        perm = torch.randperm(grid * grid)
        views = []
        for _ in range(2):
            patches = [self.per_crop(self.patch_crops[s](cell_img)) for cell_img in cells]
            views.append(torch.stack(patches)[perm])
        return torch.stack(views)

    def __call__(self, file_name: str) -> Dict[str, List[torch.Tensor]]:
        """Decode ``file_name`` and return {"crops": [...], "patches": [...]} (float tensors)."""
        with open(file_name, "rb") as f:
            img = ImageOps.exif_transpose(Image.open(f)).convert("RGB")
        crops = [self.per_crop(t(img)) for t in self.crop_transforms]
        patches = [self.pyramid_views(img, s) for s in range(len(self.grids))]
        return {"crops": crops, "patches": patches}
