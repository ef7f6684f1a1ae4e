"""FCN decode head with an auxiliary FCN head (mmsegmentation's ``FCNHead`` x 2), registered in
Detectron2's ``SEM_SEG_HEADS_REGISTRY`` as "FCNHead"."""
from typing import Dict, Optional, Tuple

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn
from torch.nn import functional as F

__all__ = ["FCNBranch", "FCNHead", "segmentation_loss"]


def segmentation_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    ignore_value: int,
    align_corners: bool,
    avg_non_ignore: bool,
) -> torch.Tensor:
    """Per-pixel cross-entropy of ``logits`` upsampled to the label size.

    Args:
        logits: (N, K, h, w) class scores.
        targets: (N, H, W) integer labels, ``ignore_value`` where unlabelled.
        ignore_value: label that contributes nothing.
        align_corners: of the bilinear upsampling.
        avg_non_ignore: average over labelled pixels only; False averages over all pixels with
            the ignored ones counting zero (mmseg's behaviour before its ``avg_non_ignore``).

    Returns:
        the scalar loss.
    """
    logits = F.interpolate(
        logits, size=targets.shape[-2:], mode="bilinear", align_corners=align_corners
    )  # (N, K, H, W)
    if avg_non_ignore:
        return F.cross_entropy(logits, targets, ignore_index=ignore_value, reduction="mean")
    loss = F.cross_entropy(logits, targets, ignore_index=ignore_value, reduction="none")
    return loss.mean()


class FCNBranch(nn.Module):
    """``num_convs`` 3x3 conv-norm-ReLU, optionally the input concatenated back and fused by one
    more 3x3 conv-norm-ReLU (``concat_input``), dropout, then a 1x1 classifier."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        num_convs: int,
        concat_input: bool,
        dropout: float,
        norm: str,
    ):
        super().__init__()
        convs = []
        for i in range(num_convs):
            convs.append(self._conv(in_channels if i == 0 else channels, channels, norm))
        self.convs = nn.Sequential(*convs)
        self.conv_cat = (
            self._conv(in_channels + channels, channels, norm) if concat_input else None
        )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.predictor = nn.Conv2d(channels if num_convs or concat_input else in_channels,
                                   num_classes, kernel_size=1)
        nn.init.normal_(self.predictor.weight, std=0.01)  # mmseg's conv_seg init
        nn.init.constant_(self.predictor.bias, 0)

    @staticmethod
    def _conv(cin: int, cout: int, norm: str) -> Conv2d:
        conv = Conv2d(cin, cout, 3, padding=1, bias=not norm, norm=get_norm(norm, cout),
                      activation=F.relu)
        weight_init.c2_msra_fill(conv)
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs(x)
        if self.conv_cat is not None:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.predictor(self.dropout(out))  # (N, K, h, w)


@SEM_SEG_HEADS_REGISTRY.register()
class FCNHead(nn.Module):
    """FCN decode head on one feature (res5) plus an auxiliary FCN head (res4) that adds a
    weighted loss during training only (mmseg ``fcn_r50-d8``).

    Training returns ``(None, {"loss_sem_seg": ..., "loss_sem_seg_aux": ...})``; inference
    returns ``(logits at input resolution, {})`` and never runs the auxiliary head.
    """

    @configurable
    def __init__(
        self,
        *,
        decode: FCNBranch,
        in_feature: str,
        num_classes: int,
        output_stride: int,
        aux: Optional[FCNBranch] = None,
        aux_in_feature: str = "",
        loss_weight: float = 1.0,
        aux_loss_weight: float = 0.4,
        ignore_value: int = 255,
        align_corners: bool = False,
        avg_non_ignore: bool = False,
    ):
        """
        Args:
            decode: the main branch; ``aux``: the auxiliary branch or None.
            in_feature, aux_in_feature: backbone features they read.
            num_classes: number of classes (the predictors' width).
            output_stride: stride of ``in_feature``; logits are upsampled by it.
            loss_weight, aux_loss_weight: weights of the two cross-entropy terms.
            ignore_value: label without loss.
            align_corners: of every bilinear resize (Cityscapes protocol: True).
            avg_non_ignore: see :func:`segmentation_loss`.
        """
        super().__init__()
        self.decode = decode
        self.aux = aux
        self.in_feature = in_feature
        self.aux_in_feature = aux_in_feature
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.loss_weight = loss_weight
        self.aux_loss_weight = aux_loss_weight
        self.ignore_value = ignore_value
        self.align_corners = align_corners
        self.avg_non_ignore = avg_non_ignore

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: Dict[str, ShapeSpec]):
        head, fcn = cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.FCN
        (in_feature,) = head.IN_FEATURES
        decode = FCNBranch(input_shape[in_feature].channels, head.CONVS_DIM, head.NUM_CLASSES,
                           fcn.NUM_CONVS, fcn.CONCAT_INPUT, fcn.DROPOUT, head.NORM)
        aux = None
        if fcn.AUX_IN_FEATURE:
            aux = FCNBranch(input_shape[fcn.AUX_IN_FEATURE].channels, fcn.AUX_CONVS_DIM,
                            head.NUM_CLASSES, fcn.AUX_NUM_CONVS, False, fcn.DROPOUT, head.NORM)
        return {
            "decode": decode,
            "in_feature": in_feature,
            "num_classes": head.NUM_CLASSES,
            "output_stride": input_shape[in_feature].stride,
            "aux": aux,
            "aux_in_feature": fcn.AUX_IN_FEATURE,
            "loss_weight": head.LOSS_WEIGHT,
            "aux_loss_weight": fcn.AUX_LOSS_WEIGHT,
            "ignore_value": head.IGNORE_VALUE,
            "align_corners": fcn.ALIGN_CORNERS,
            "avg_non_ignore": fcn.AVG_NON_IGNORE,
        }

    def forward(
        self, features: Dict[str, torch.Tensor], targets: Optional[torch.Tensor] = None
    ) -> Tuple[Optional[torch.Tensor], Dict[str, torch.Tensor]]:
        """See :meth:`detectron2.modeling.SemSegFPNHead.forward`."""
        if not self.training:
            return self.predict(features), {}
        logits = self.decode(features[self.in_feature])  # (N, K, H/8, W/8)
        losses = {"loss_sem_seg": self.loss_weight * self._loss(logits, targets)}
        if self.aux is not None:
            aux_logits = self.aux(features[self.aux_in_feature])
            losses["loss_sem_seg_aux"] = self.aux_loss_weight * self._loss(aux_logits, targets)
        return None, losses

    def predict(
        self, features: Dict[str, torch.Tensor], size: Optional[Tuple[int, int]] = None
    ) -> torch.Tensor:
        """Logits of the main branch resized to ``size`` (default: the feature size times the
        output stride); the auxiliary branch is not run.

        Returns:
            (N, K, *size) class scores.
        """
        logits = self.decode(features[self.in_feature])  # (N, K, h, w)
        if size is None:
            size = tuple(s * self.output_stride for s in logits.shape[-2:])
        return F.interpolate(logits, size=tuple(size), mode="bilinear",
                             align_corners=self.align_corners)  # (N, K, H, W)

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return segmentation_loss(logits, targets, self.ignore_value, self.align_corners,
                                 self.avg_non_ignore)
