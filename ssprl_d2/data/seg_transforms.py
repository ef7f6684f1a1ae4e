"""The mmsegmentation training augmentations that Detectron2 lacks: ratio-range resize, pad to
the crop size, and ``PhotoMetricDistortion``. (mmseg's ``RandomCrop(cat_max_ratio)`` is
Detectron2's ``RandomCrop_CategoryAreaConstraint``, which makes the same 10 tries.)"""
from typing import Sequence, Tuple

import numpy as np
from detectron2.data import transforms as T
from fvcore.transforms.transform import PadTransform, Transform
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

__all__ = [
    "MeanPadTransform",
    "PadToSize",
    "PhotoMetricDistortion",
    "PhotoMetricTransform",
    "RandomRatioResize",
    "rescale_size",
]


def rescale_size(h: int, w: int, long_side: float, short_side: float) -> Tuple[int, int]:
    """(new_h, new_w) of mmcv's keep-ratio rescale: the largest size whose long side is at most
    ``long_side`` and short side at most ``short_side``."""
    scale = min(long_side / max(h, w), short_side / min(h, w))
    return int(h * scale + 0.5), int(w * scale + 0.5)


class RandomRatioResize(T.Augmentation):
    """mmseg ``Resize(img_scale=(long, short), ratio_range=(lo, hi), keep_ratio=True)``: draw a
    ratio r ~ U(lo, hi) and rescale to fit (r * long, r * short), keeping the aspect ratio."""

    def __init__(self, scale: Sequence[int], ratio_range: Sequence[float]):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        r = np.random.uniform(self.ratio_range[0], self.ratio_range[1])
        long_side, short_side = max(self.scale) * r, min(self.scale) * r
        new_h, new_w = rescale_size(h, w, long_side, short_side)
        return T.ResizeTransform(h, w, new_h, new_w)


class MeanPadTransform(PadTransform):
    """Pad on the right / bottom; the image with a per-channel colour (the pixel mean, which
    is 0 after normalisation, as mmseg pads normalised images), the label with ``seg_pad_value``."""

    def __init__(self, x1: int, y1: int, orig_w: int, orig_h: int, pad_color, seg_pad_value: int):
        super().__init__(0, 0, x1, y1, orig_w, orig_h, 0, seg_pad_value)
        self.pad_color = np.asarray(pad_color, dtype=np.float64)

    def apply_image(self, img):
        out = np.empty((img.shape[0] + self.y1, img.shape[1] + self.x1) + img.shape[2:], img.dtype)
        out[...] = self.pad_color.astype(img.dtype) if img.ndim == 3 else 0
        out[: img.shape[0], : img.shape[1]] = img
        return out


class PadToSize(T.Augmentation):
    """Pad the image (with ``pad_color``) and the label (with ``seg_pad_value``) on the right and
    bottom up to ``size`` = (h, w); larger images are left as they are."""

    def __init__(self, size: Sequence[int], pad_color, seg_pad_value: int = 255):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        ph, pw = max(self.size[0] - h, 0), max(self.size[1] - w, 0)
        return MeanPadTransform(pw, ph, w, h, self.pad_color, self.seg_pad_value)


class PhotoMetricTransform(Transform):
    """Fixed parameters of one :class:`PhotoMetricDistortion` draw (a value of None = skipped);
    labels and coordinates are unchanged."""

    def __init__(self, brightness, contrast, contrast_first: bool, saturation, hue):
        super().__init__()
        self._set_attributes(locals())

    @staticmethod
    def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        # mmseg rounds to uint8 (truncating) after every step.
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if self.brightness is not None:
            img = self._convert(img, beta=self.brightness)
        if self.contrast_first and self.contrast is not None:
            img = self._convert(img, alpha=self.contrast)
        if self.saturation is not None or self.hue is not None:
            hsv = rgb_to_hsv(img.astype(np.float32) / 255.0)  # (H, W, 3) in [0, 1]
            if self.saturation is not None:
                hsv[..., 1] = np.clip(hsv[..., 1] * self.saturation, 0, 1)
            if self.hue is not None:
                hsv[..., 0] = (hsv[..., 0] + self.hue / 180.0) % 1.0  # OpenCV hue unit: 2 deg
            img = (hsv_to_rgb(hsv) * 255.0).astype(np.uint8)
        if not self.contrast_first and self.contrast is not None:
            img = self._convert(img, alpha=self.contrast)
        return img

    def apply_coords(self, coords):
        return coords

    def apply_segmentation(self, segmentation):
        return segmentation


class PhotoMetricDistortion(T.Augmentation):
    """mmseg's ``PhotoMetricDistortion``: each with probability 0.5, brightness + U(-32, 32),
    contrast x U(0.5, 1.5) (before or after the colour steps, at random), saturation
    x U(0.5, 1.5) and hue + U(-18, 18) (OpenCV units) in HSV. Expects RGB uint8."""

    def __init__(self, brightness_delta: int = 32, contrast_range=(0.5, 1.5),
                 saturation_range=(0.5, 1.5), hue_delta: int = 18):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        def maybe(draw):
            return draw() if np.random.randint(2) else None

        brightness = maybe(lambda: np.random.uniform(-self.brightness_delta,
                                                     self.brightness_delta))
        contrast_first = bool(np.random.randint(2))
        contrast = maybe(lambda: np.random.uniform(*self.contrast_range))
        saturation = maybe(lambda: np.random.uniform(*self.saturation_range))
        hue = maybe(lambda: np.random.randint(-self.hue_delta, self.hue_delta))
        return PhotoMetricTransform(brightness, contrast, contrast_first, saturation, hue)
