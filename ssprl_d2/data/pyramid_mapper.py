"""The SS-PRL pyramid dataset mapper: scale-0 multi-crop views and two pyramid views per scale.

Every random quantity (crop boxes, flips, patch offsets, patch order, photometric parameters) is
drawn per crop from the sample's ``torch.Generator``, in a fixed order, before any pixel work;
the pixels are then produced in as few batched ops as the resampling mode allows:

- ``RESAMPLE interpolate``: each scale-0 crop and each pyramid crop is resized with
  antialiased bilinear interpolation straight from the decoded uint8 image (PyTorch's uint8
  channels-last kernel, the PIL algorithm); pyramid patches are slices of the resized pyramid
  crop.
- ``RESAMPLE roi_align``: the image is converted to float once and every output of one size
  (scale-0 crops and pyramid patches alike, a patch being a sub-box of its pyramid crop) is
  resampled in ONE ``roi_align`` call; ``sampling_ratio=-1`` averages ceil(box / size)^2
  bilinear samples per output pixel, which anti-aliases when downscaling.

Photometric augmentation is either applied here, batched per output size (``PHOTOMETRIC_ON
loader``), or its parameters are shipped as a "photometric" tensor and applied batched on the
training device by the model (``model``). Crops stay uint8 until then.

The crop geometry and resampling are in :mod:`.crop_geometry`, the decoder in :mod:`.image_io`.
"""
import copy
from typing import Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import torch
from detectron2.config import configurable

from ssprl_d2.config.choices import LOADER_KERNELS, PHOTOMETRIC_ON, RESAMPLE_MODES, check_choice
from ssprl_d2.ops import apply_photometric, sample_photometric_params

from .crop_geometry import (
    Box,
    as_channels_last,
    box_to_roi,
    flip_selected_,
    resize_box_channels_last,
    roi_resample,
    round_to_uint8_,
    sample_resized_crop_box,
)
from .image_io import read_rgb_tensor
from .photometric_numba import apply_photometric_numba, warm_up_numba_kernel


class _CropGroup(NamedTuple):
    """Scale-0 crops of one output size."""

    size: int
    boxes: List[Box]
    flips: torch.Tensor  # (n,) bool


class _PyramidView(NamedTuple):
    """One view of one pyramid scale, patches already in output (shuffled) order."""

    box: Box  # the resized crop, in image pixels
    resize: int  # side of the resized crop
    patch: int
    tops: List[int]  # patch offsets in the resized crop, output order
    lefts: List[int]
    flips: torch.Tensor  # (M,) bool, output order


class PyramidDatasetMapper:
    """Turn one dataset dict into the SS-PRL views of its image (tensors only).

    Output dict keys: "crops" (list of (3, s, s) uint8, scale 0), "patches" (one (2, M_s, 3, p,
    p) uint8 tensor per pyramid scale; patch m of view 0 and of view 1 come from the same grid
    cell), optionally "photometric" ((n_crops + sum_s 2 M_s, P) float parameters in the same
    order: crops, then scale 1 view 0 patches, view 1 patches, scale 2 ...), plus "image_id".
    Returns None when the image cannot be read (the loader then takes another image).

    All randomness comes from the ``generator`` passed per sample, so the output is a function
    of (image, generator seed).
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
        loader_kernel: str = "numba",
        resample: str = "interpolate",
        image_format: str = "RGB",
    ):
        """
        Args:
            crop_sizes, num_crops, min_scales, max_scales: scale-0 multi-crop groups.
            grids, pyramid_resize, pyramid_scales, patch_sizes: one entry per pyramid scale.
            shared_pyramid_crop: both pyramid views are cut from the same resized crop.
            shuffle_patches: shuffle the patch order (identically for both views).
            ratio: aspect-ratio range of every RandomResizedCrop.
            flip_prob, color_jitter, color_jitter_prob, grayscale_prob, blur_prob, blur_sigma:
                the per-crop augmentation of the release (SwAV's recipe).
            photometric_on: "loader" (applied here) or "model" (parameters shipped).
            loader_kernel: implementation used when ``photometric_on`` is "loader": "numba"
                (:mod:`.photometric_numba`, one compiled pass per crop) or "torch"
                (:func:`ssprl_d2.ops.apply_photometric`, the device implementation).
            resample: "interpolate" or "roi_align" (see the module docstring).
            image_format: format the image is read in (RGB).
        """
        check_choice("INPUT.SSPRL.RESAMPLE", resample, RESAMPLE_MODES)
        check_choice("INPUT.SSPRL.PHOTOMETRIC_ON", photometric_on, PHOTOMETRIC_ON)
        check_choice("INPUT.SSPRL.LOADER_KERNEL", loader_kernel, LOADER_KERNELS)
        if photometric_on == "loader" and loader_kernel == "numba":
            # Fails here, at start-up, if numba is missing; compiles (or loads the cached
            # machine code) once in this process, before data-loader workers fork from it.
            warm_up_numba_kernel()
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
        self.loader_kernel = loader_kernel
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
            "loader_kernel": s.LOADER_KERNEL,
            "resample": s.RESAMPLE,
            "image_format": cfg.INPUT.FORMAT if cfg.INPUT.FORMAT == "RGB" else "RGB",
        }

    @property
    def num_outputs(self) -> int:
        return sum(self.num_crops) + sum(2 * g * g for g in self.grids)

    # ------------------------------------------------------------------ random draws
    def _draw_flips(self, n: int, g: Optional[torch.Generator]) -> torch.Tensor:
        return torch.rand(n, generator=g) < self.flip_prob

    def _draw_pyramid(self, h: int, w: int, s: int, g) -> List[_PyramidView]:
        """The two views of pyramid scale index ``s`` (0-based)."""
        grid, size, patch = self.grids[s], self.pyramid_resize[s], self.patch_sizes[s]
        cell = size // grid
        m = grid * grid
        box = sample_resized_crop_box(h, w, self.pyramid_scales[s], self.ratio, g)
        perm = torch.randperm(m, generator=g) if self.shuffle_patches else torch.arange(m)
        rows, cols = torch.arange(m) // grid, torch.arange(m) % grid
        views = []
        for v in range(2):
            if v == 1 and not self.shared_pyramid_crop:
                box = sample_resized_crop_box(h, w, self.pyramid_scales[s], self.ratio, g)
            # (top, left) offset inside every cell, cells in row-major order.
            offsets = torch.randint(0, cell - patch + 1, (m, 2), generator=g)
            flips = self._draw_flips(m, g)
            tops = (rows * cell + offsets[:, 0])[perm].tolist()
            lefts = (cols * cell + offsets[:, 1])[perm].tolist()
            views.append(_PyramidView(box, size, patch, tops, lefts, flips[perm]))
        return views

    def _draw(self, h: int, w: int, g):
        crop_groups = []
        for size, n, scale in zip(self.crop_sizes, self.num_crops, self.crop_scales):
            boxes = [sample_resized_crop_box(h, w, scale, self.ratio, g) for _ in range(n)]
            crop_groups.append(_CropGroup(size, boxes, self._draw_flips(n, g)))
        views = [self._draw_pyramid(h, w, s, g) for s in range(len(self.grids))]
        params = sample_photometric_params(self.num_outputs, generator=g, **self.photo_kwargs)
        return crop_groups, views, params

    # ------------------------------------------------------------------ pixels
    def _render_interpolate(self, image: torch.Tensor, crop_groups, views):
        """uint8 blocks in canonical order (crop groups, then (scale, view) patch sets), and
        per pyramid scale the (2, M, 3, p, p) tensor whose two views are those blocks.

        The flips are applied here, in the copy that each crop and patch needs anyway (flips
        commute with every photometric op: all are mirror-symmetric)."""
        image_cl = as_channels_last(image)
        blocks = []
        for grp in crop_groups:
            # Each resize is copied once, straight into the (n, 3, s, s) block.
            block = torch.empty(len(grp.boxes), 3, grp.size, grp.size, dtype=torch.uint8)
            for i, (b, flip) in enumerate(zip(grp.boxes, grp.flips.tolist())):
                crop = resize_box_channels_last(image_cl, b, grp.size)[0]
                block[i].copy_(crop.flip(-1) if flip else crop)
            blocks.append(block)
        pyramids = []
        for scale_views in views:
            p = scale_views[0].patch
            out = torch.empty(2, len(scale_views[0].tops), 3, p, p, dtype=torch.uint8)
            resized = None
            for v, view in enumerate(scale_views):
                if v == 0 or not self.shared_pyramid_crop:
                    # (3, S, S) in channels-last memory: the patches are copied out of it.
                    resized = resize_box_channels_last(image_cl, view.box, view.resize)[0]
                cells = [
                    resized[:, t : t + p, l : l + p]
                    for t, l in zip(view.tops, view.lefts)
                ]
                for m in view.flips.nonzero().flatten().tolist():
                    cells[m] = cells[m].flip(-1)
                blocks.append(torch.stack(cells, out=out[v]))
            pyramids.append(out)
        return blocks, pyramids

    def _render_roi_align(self, image: torch.Tensor, crop_groups, views) -> List[torch.Tensor]:
        """float (0-255) blocks in canonical order; one ``roi_align`` per output size."""
        rois: List[List[float]] = []
        sizes: List[int] = []
        counts: List[int] = []
        for grp in crop_groups:
            rois += [box_to_roi(b) for b in grp.boxes]
            sizes.append(grp.size)
            counts.append(len(grp.boxes))
        for scale_views in views:
            for view in scale_views:
                top, left, h, w = view.box
                sy, sx, p = h / view.resize, w / view.resize, view.patch
                # A patch of the resized crop is a sub-box of the crop in image coordinates.
                rois += [
                    [left + l * sx, top + t * sy, left + (l + p) * sx, top + (t + p) * sy]
                    for t, l in zip(view.tops, view.lefts)
                ]
                sizes.append(p)
                counts.append(len(view.tops))
        all_rois = torch.tensor(rois, dtype=torch.float32)
        image_f = image.to(torch.float32, memory_format=torch.contiguous_format)
        starts = np.cumsum([0] + counts)
        blocks: List[Optional[torch.Tensor]] = [None] * len(counts)
        for size in dict.fromkeys(sizes):  # one roi_align per size, in first-seen order
            ids = [i for i, s in enumerate(sizes) if s == size]
            rows = torch.cat([torch.arange(starts[i], starts[i + 1]) for i in ids])
            out = roi_resample(image_f, all_rois[rows], size)
            for i, part in zip(ids, out.split([counts[i] for i in ids])):
                blocks[i] = part
        return blocks

    def _photometric_by_size(self, blocks: List[torch.Tensor], params: torch.Tensor):
        """Loader-side photometric on the blocks (canonical order); returns uint8 blocks.
        The numba kernel takes each block in place; the torch one is batched per output size."""
        counts = [b.shape[0] for b in blocks]
        starts = np.cumsum([0] + counts).tolist()
        if self.loader_kernel == "numba":
            out = []
            for b, lo, hi in zip(blocks, starts, starts[1:]):
                if b.dtype != torch.uint8:
                    b = round_to_uint8_(b)  # roi_align output (0-255 float)
                out.append(apply_photometric_numba(b, params[lo:hi], out=b))
            return out
        sizes = [b.shape[-1] for b in blocks]
        out: List[Optional[torch.Tensor]] = [None] * len(blocks)
        for size in dict.fromkeys(sizes):
            ids = [i for i, s in enumerate(sizes) if s == size]
            x = torch.cat([blocks[i] for i in ids]) if len(ids) > 1 else blocks[ids[0]]
            rows = torch.cat([torch.arange(starts[i], starts[i + 1]) for i in ids])
            if x.dtype != torch.uint8:
                x = round_to_uint8_(x)  # roi_align output (0-255 float)
            x = apply_photometric(x, params[rows])  # uint8 in, uint8 out
            for i, part in zip(ids, x.split([counts[i] for i in ids])):
                out[i] = part
        return out

    # ------------------------------------------------------------------ main
    def map_image(self, image: torch.Tensor, generator: Optional[torch.Generator] = None) -> dict:
        """Views of a (3, H, W) uint8 RGB image (any memory layout; an HWC-backed tensor
        avoids a copy). See the class docstring."""
        _, h, w = image.shape
        crop_groups, views, params = self._draw(h, w, generator)
        pyramids = None
        if self.resample == "roi_align":
            blocks = self._render_roi_align(image, crop_groups, views)
        else:
            blocks, pyramids = self._render_interpolate(image, crop_groups, views)
        if self.photometric_on == "loader":
            blocks = self._photometric_by_size(blocks, params)
            if self.loader_kernel != "numba":
                # New tensors: restack the patches below. (The numba kernel writes in place,
                # so the pyramid tensors already hold its result.)
                pyramids = None
        else:
            blocks = [b if b.dtype == torch.uint8 else round_to_uint8_(b) for b in blocks]
        if self.resample == "roi_align":
            # Flips commute with every photometric op (all are mirror-symmetric), so they are
            # applied last, on uint8 (``interpolate`` applied them while rendering).
            flips = [grp.flips for grp in crop_groups]
            flips += [view.flips for scale_views in views for view in scale_views]
            blocks = [flip_selected_(b, f) for b, f in zip(blocks, flips)]
        n_groups = len(crop_groups)
        crops = [c for b in blocks[:n_groups] for c in b.unbind(0)]
        patches = pyramids or [
            torch.stack(blocks[n_groups + 2 * s : n_groups + 2 * s + 2])
            for s in range(len(views))
        ]
        out: Dict[str, object] = {"crops": crops, "patches": patches}
        if self.photometric_on == "model":
            out["photometric"] = params
        return out

    def __call__(self, dataset_dict: dict, generator: Optional[torch.Generator] = None):
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_rgb_tensor(dataset_dict["file_name"])
        if image is None:
            return None
        out = self.map_image(image, generator)
        out["image_id"] = dataset_dict.get("image_id", dataset_dict["file_name"])
        return out
