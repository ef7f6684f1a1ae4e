"""Detectron2's ``SemanticSegmentor`` with mmsegmentation's two test modes: the whole image, or
overlapping sliding windows (the Cityscapes protocol: 769 px crops, stride 513)."""
from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, SemanticSegmentor
from torch.nn import functional as F

from ssprl_d2.config.choices import SEM_SEG_TEST_MODES, check_choice

__all__ = ["SlidingWindowSemanticSegmentor", "sliding_windows"]


def sliding_windows(
    height: int, width: int, crop: Sequence[int], stride: Sequence[int]
) -> List[Tuple[int, int, int, int]]:
    """Windows ``(y0, y1, x0, x1)`` covering an image, as mmseg's ``slide_inference`` places
    them: a grid of ``stride`` steps, the last window of each row / column moved back inside.

    Args:
        height, width: image size.
        crop: (h, w) of a window; stride: (h, w) step between windows.
    """
    (ch, cw), (sh, sw) = crop, stride
    rows = max(height - ch + sh - 1, 0) // sh + 1
    cols = max(width - cw + sw - 1, 0) // sw + 1
    windows = []
    for r in range(rows):
        for c in range(cols):
            y1, x1 = min(r * sh + ch, height), min(c * sw + cw, width)
            windows.append((max(y1 - ch, 0), y1, max(x1 - cw, 0), x1))
    return windows


@META_ARCH_REGISTRY.register()
class SlidingWindowSemanticSegmentor(SemanticSegmentor):
    """:class:`SemanticSegmentor` (same training, same outputs) whose inference runs one image
    at a time, in ``"whole"`` mode or over ``"slide"`` windows whose logits are averaged; the
    logits are resized to the requested output size with the head's ``align_corners``.

    The head must have ``predict(features, size) -> logits`` (see
    :class:`ssprl_d2.modeling.fcn_head.FCNHead`).
    """

    @configurable
    def __init__(
        self,
        *,
        test_mode: str = "whole",
        test_crop_size: Tuple[int, int] = (769, 769),
        test_stride: Tuple[int, int] = (513, 513),
        **kwargs,
    ):
        """
        Args:
            test_mode: "whole" or "slide".
            test_crop_size, test_stride: (h, w) of the windows and of their step ("slide").
            kwargs: see :class:`SemanticSegmentor`.
        """
        super().__init__(**kwargs)
        check_choice("test_mode", test_mode, SEM_SEG_TEST_MODES)
        self.test_mode = test_mode
        self.test_crop_size = tuple(test_crop_size)
        self.test_stride = tuple(test_stride)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict:
        ret = super().from_config(cfg)
        test = cfg.TEST.SEM_SEG
        ret.update(test_mode=test.MODE, test_crop_size=tuple(test.CROP_SIZE),
                   test_stride=tuple(test.STRIDE))
        return ret

    def forward(self, batched_inputs: List[Dict]):
        """See :meth:`SemanticSegmentor.forward`."""
        if self.training:
            return super().forward(batched_inputs)
        return [self.inference_one(x) for x in batched_inputs]

    @torch.no_grad()
    def inference_one(self, inputs: Dict) -> Dict[str, torch.Tensor]:
        """Logits ``{"sem_seg": (K, height, width)}`` of one mapped image."""
        image = (inputs["image"].to(self.device) - self.pixel_mean) / self.pixel_std
        image = image[None]  # (1, 3, H, W)
        if self.test_mode == "slide":
            logits = self._slide(image)
        else:
            logits = self._encode_decode(image)
        size = (inputs.get("height", image.shape[-2]), inputs.get("width", image.shape[-1]))
        logits = F.interpolate(logits, size=size, mode="bilinear",
                               align_corners=self.sem_seg_head.align_corners)
        return {"sem_seg": logits[0]}  # (K, height, width)

    def _encode_decode(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        div = self.backbone.size_divisibility
        if div > 1:
            image = F.pad(image, (0, (-w) % div, 0, (-h) % div))
        logits = self.sem_seg_head.predict(self.backbone(image), image.shape[-2:])
        return logits[..., :h, :w]  # (1, K, H, W)

    def _slide(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        logits = count = None
        for y0, y1, x0, x1 in sliding_windows(h, w, self.test_crop_size, self.test_stride):
            crop_logits = self._encode_decode(image[..., y0:y1, x0:x1])
            if logits is None:
                logits = image.new_zeros((1, crop_logits.shape[1], h, w))
                count = image.new_zeros((1, 1, h, w))
            logits[..., y0:y1, x0:x1] += crop_logits
            count[..., y0:y1, x0:x1] += 1
        return logits / count  # (1, K, H, W)
