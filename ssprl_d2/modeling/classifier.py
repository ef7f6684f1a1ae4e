"""Multi-label image classifier on a Detectron2 backbone: linear evaluation and fine-tuning.

The transfer protocol of SS-PRL (and SwAV-style evaluations): global average pooling of one
backbone feature map, one linear layer, BCE-with-logits per label. ``linear`` freezes the whole
backbone (weights and BatchNorm statistics), ``finetune`` trains everything.
"""
from collections import defaultdict
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from torch import nn

from ssprl_d2.config.choices import CLASSIFIER_MODES, check_choice


def multilabel_bce_loss(
    logits: torch.Tensor, targets: torch.Tensor, ignore_value: float = -1
) -> torch.Tensor:
    """Binary cross-entropy with logits that skips ignored targets.

    The loss is summed over the labelled entries and divided by the number of images, as in the
    SS-PRL release (so its learning rates carry over); ignored entries contribute nothing.

    Args:
        logits: (N, C) raw scores.
        targets: (N, C) with 1 (present), 0 (absent) or ``ignore_value``.
        ignore_value: target value to skip (VOC "difficult").

    Returns:
        scalar loss.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    targets = targets.to(logits.dtype)
    ignored = targets == ignore_value
    per_entry = F.binary_cross_entropy_with_logits(
        logits, targets.masked_fill(ignored, 0.0), reduction="none"
    )
    return per_entry.masked_fill(ignored, 0.0).sum() / max(logits.shape[0], 1)


@META_ARCH_REGISTRY.register()
class MultiLabelClassifier(nn.Module):
    """Backbone + global average pooling + linear head, trained with masked BCE.

    Inputs are lists of dicts with "image" (CHW uint8 tensor in the model's input format) and,
    in training, "labels" (float tensor of length ``num_classes`` with 1 / 0 / ignore_value).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        num_classes: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        in_feature: str = "res5",
        mode: str = "linear",
        ignore_value: float = -1,
    ):
        """
        Args:
            backbone: a Detectron2 backbone that outputs ``in_feature``.
            num_classes: number of labels.
            pixel_mean, pixel_std: per-channel normalisation, in the input's 0-255 scale.
            in_feature: name of the pooled feature map.
            mode: "linear" (backbone frozen, BN in eval mode) or "finetune".
            ignore_value: target value that is left out of the loss.
        """
        super().__init__()
        check_choice("mode", mode, CLASSIFIER_MODES)
        shapes = backbone.output_shape()
        if in_feature not in shapes:
            raise ValueError(
                f"Backbone has no feature {in_feature!r} (it outputs {sorted(shapes)}); set "
                "MODEL.CLASSIFIER.IN_FEATURE or the backbone's OUT_FEATURES."
            )
        self.backbone = backbone
        self.in_feature = in_feature
        self.mode = mode
        self.ignore_value = ignore_value
        self.head = nn.Linear(shapes[in_feature].channels, num_classes)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        if mode == "linear":
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict:
        return {
            "backbone": build_backbone(cfg),
            "num_classes": cfg.MODEL.CLASSIFIER.NUM_CLASSES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "in_feature": cfg.MODEL.CLASSIFIER.IN_FEATURE,
            "mode": cfg.MODEL.CLASSIFIER.MODE,
            "ignore_value": cfg.MODEL.CLASSIFIER.IGNORE_VALUE,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def train(self, mode: bool = True) -> "MultiLabelClassifier":
        """See :meth:`nn.Module.train`; in linear mode the backbone always stays in eval mode,
        so its BatchNorm statistics are never updated."""
        super().train(mode)
        if self.mode == "linear":
            self.backbone.eval()
        return self

    def pooled_features(self, images: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled backbone features of normalised images (B, 3, H, W)."""
        if self.mode == "linear":
            with torch.no_grad():
                features = self.backbone(images)[self.in_feature]
        else:
            features = self.backbone(images)[self.in_feature]
        return features.mean(dim=(2, 3))  # (B, C_feat)

    def features_of_inputs(self, batched_inputs: List[Dict]) -> torch.Tensor:
        # Images of equal size run as one batch; a batch with mixed sizes (only at inference on
        # user inputs) is split by size instead of padded, since padding would enter the pooling.
        by_size = defaultdict(list)
        for i, x in enumerate(batched_inputs):
            by_size[tuple(x["image"].shape[-2:])].append(i)
        pooled = [None] * len(batched_inputs)
        for indices in by_size.values():
            images = torch.stack([self._normalize(batched_inputs[i]["image"]) for i in indices])
            for i, f in zip(indices, self.pooled_features(images)):
                pooled[i] = f
        return torch.stack(pooled)  # (N, C_feat)

    def _normalize(self, image: torch.Tensor) -> torch.Tensor:
        image = image.to(self.device, non_blocking=True).float()
        return (image - self.pixel_mean) / self.pixel_std

    def forward(self, batched_inputs: List[Dict]):
        """
        Args:
            batched_inputs: list of dicts with "image" and (training) "labels".

        Returns:
            training: {"loss_cls": scalar}; inference: see :meth:`inference`.
        """
        if not self.training:
            return self.inference(batched_inputs)
        logits = self.head(self.features_of_inputs(batched_inputs))  # (N, K)
        targets = torch.stack([x["labels"] for x in batched_inputs]).to(self.device)
        if targets.shape != logits.shape:
            raise ValueError(
                f"Labels have {targets.shape[-1]} entries but the head has {self.num_classes} "
                "classes (MODEL.CLASSIFIER.NUM_CLASSES)."
            )
        return {"loss_cls": multilabel_bce_loss(logits, targets, self.ignore_value)}

    def inference(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        """Returns one dict per image with "scores": (num_classes,) sigmoid probabilities."""
        logits = self.head(self.features_of_inputs(batched_inputs))
        return [{"scores": s} for s in logits.sigmoid()]


# ------------------------------------------------------------------------ start-up checks
def check_head_compatibility(state_dict: Dict[str, object], num_classes: int, source: str) -> None:
    """Raise ``ValueError`` if ``state_dict`` holds a classifier head for another class count.

    Detectron2's checkpointer only warns and skips parameters of mismatched shape; for the head
    that would silently train a fresh head on top of a supposedly trained classifier.
    """
    for key in ("head.weight", "module.head.weight"):
        weight = state_dict.get(key)
        if weight is None or not hasattr(weight, "shape") or len(weight.shape) != 2:
            continue
        if int(weight.shape[0]) != num_classes:
            raise ValueError(
                f"The weights {source} contain a classifier head '{key}' for {weight.shape[0]} "
                f"classes, but MODEL.CLASSIFIER.NUM_CLASSES is {num_classes}. Use a checkpoint "
                "trained for this label set, set NUM_CLASSES to match, or start from backbone-only "
                "weights (tools/convert_to_d2.py keeps only the backbone)."
            )
