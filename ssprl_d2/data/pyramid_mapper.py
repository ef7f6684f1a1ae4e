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
"""
import copy
import math
import warnings
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.utils.file_io import PathManager
from torchvision.io import ImageReadMode, decode_image
from torchvision.ops import roi_align

from .image_io import note_image_read, read_image_or_none
from ssprl_d2.config.choices import (
    LOADER_KERNELS,
    PHOTOMETRIC_ON,
    RESAMPLE_MODES,
    check_choice,
)

from ssprl_d2.ops import apply_photometric, sample_photometric_params, truncate_to_uint8
from .photometric_numba import apply_photometric_numba, warm_up_numba_kernel


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


def _as_channels_last(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) -> (1, 3, H, W) in channels-last memory (free for an HWC-backed tensor)."""
    return image.unsqueeze(0).contiguous(memory_format=torch.channels_last)


def _resize_box(image_cl: torch.Tensor, box: Box, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of ``box`` of a (1, 3, H, W) image to (1, 3, size, size)
    (contiguous; see :func:`_resize_box_cl`)."""
    return _resize_box_cl(image_cl, box, size).contiguous()


def _resize_box_cl(image_cl: torch.Tensor, box: Box, size: int) -> torch.Tensor:
    """:func:`_resize_box` in the kernel's channels-last memory (callers that copy the
    result anyway skip a copy).

    uint8 input takes PyTorch's fixed-point uint8 kernel (the PIL algorithm), float input the
    float kernel; both match ``PIL.Image.resize(..., BILINEAR)`` up to rounding.
    """
    top, left, h, w = box
    crop = image_cl[:, :, top : top + h, left : left + w]
    out = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False,
                        antialias=True)
    if out.dtype != torch.uint8:
        out = _to_uint8(out)
    return out


def resized_crop(image: torch.Tensor, box: Box, size: int) -> torch.Tensor:
    """Crop ``box`` of a (3, H, W) uint8 image and resize it to size x size (antialiased
    bilinear, like PIL's resize). Returns (3, size, size) uint8."""
    return _resize_box(_as_channels_last(image), box, size)[0]


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
    return _to_uint8(roi_resample(image.float().contiguous(), rois, size))


def _flip_(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Mirror (in place) the images of (n, C, H, W) ``x`` selected by the bool mask ``flips``."""
    for i in flips.nonzero().flatten().tolist():
        x[i] = x[i].flip(-1)
    return x


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float 0-255 scale -> uint8, rounded to nearest and clamped (``x`` is modified)."""
    return truncate_to_uint8(x.round_().clamp_(0, 255))


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
                (:func:`.photometric.apply_photometric`, the device implementation).
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
        image_cl = _as_channels_last(image)
        blocks = []
        for grp in crop_groups:
            # Each resize is copied once, straight into the (n, 3, s, s) block.
            block = torch.empty(len(grp.boxes), 3, grp.size, grp.size, dtype=torch.uint8)
            for i, (b, flip) in enumerate(zip(grp.boxes, grp.flips.tolist())):
                crop = _resize_box_cl(image_cl, b, grp.size)[0]
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
                    resized = _resize_box_cl(image_cl, view.box, view.resize)[0]
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
                    b = _to_uint8(b)  # roi_align output (0-255 float)
                out.append(apply_photometric_numba(b, params[lo:hi], out=b))
            return out
        sizes = [b.shape[-1] for b in blocks]
        out: List[Optional[torch.Tensor]] = [None] * len(blocks)
        for size in dict.fromkeys(sizes):
            ids = [i for i, s in enumerate(sizes) if s == size]
            x = torch.cat([blocks[i] for i in ids]) if len(ids) > 1 else blocks[ids[0]]
            rows = torch.cat([torch.arange(starts[i], starts[i + 1]) for i in ids])
            if x.dtype != torch.uint8:
                x = _to_uint8(x)  # roi_align output (0-255 float)
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
            blocks = [b if b.dtype == torch.uint8 else _to_uint8(b) for b in blocks]
        if self.resample == "roi_align":
            # Flips commute with every photometric op (all are mirror-symmetric), so they are
            # applied last, on uint8 (``interpolate`` applied them while rendering).
            flips = [grp.flips for grp in crop_groups]
            flips += [view.flips for scale_views in views for view in scale_views]
            blocks = [_flip_(b, f) for b, f in zip(blocks, flips)]
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


def read_rgb_tensor(file_name: str) -> Optional[torch.Tensor]:
    """Decode an image as a (3, H, W) uint8 RGB tensor backed by HWC memory (no transposing
    copy; the uint8 resize kernel wants channels-last anyway), EXIF orientation applied.

    JPEG files are decoded by torchvision (libjpeg-turbo, as PIL, same pixels; ~15% faster
    than going through PIL and numpy), other files and anything torchvision cannot decode by
    :func:`read_image_or_none` (the project's one PIL decoder: 16-bit PNGs scaled to 8 bits),
    which logs and counts unreadable files; those give None. Same pixels as
    ``read_image_array(file_name, format="RGB")``.
    """
    note_image_read()
    try:
        with PathManager.open(file_name, "rb") as f:
            data = bytearray(f.read())
        if data[:3] == b"\xff\xd8\xff":  # JPEG
            image = decode_image(
                torch.frombuffer(data, dtype=torch.uint8),
                mode=ImageReadMode.RGB,
                apply_exif_orientation=True,
            )
            if image.dtype == torch.uint8 and image.dim() == 3 and image.shape[0] == 3:
                # HWC memory already, except after an EXIF rotation or a grey decode.
                return image.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    except Exception:
        pass  # PIL decides below
    return _read_rgb_tensor_pil(file_name)


def _read_rgb_tensor_pil(file_name: str) -> Optional[torch.Tensor]:
    """:func:`read_rgb_tensor` through PIL (:func:`read_image_or_none`)."""
    array = read_image_or_none(file_name, format="RGB", count_read=False)
    if array is None:
        return None
    # The array may be read-only; it is never written to.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
