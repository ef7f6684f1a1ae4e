"""Dilated ResNet backbone with output stride 8 (mmsegmentation's "R50-D8") for FCN transfer.

Detectron2's own builders cannot express the protocol: ``build_resnet_backbone`` dilates res5
only (by 2), and DeepLab's ``build_resnet_deeplab_backbone`` dilates res4 by 2 and res5 by 4 but
has no ResNet-18/34 and no ``contract_dilation`` (mmseg: the first block of a dilated stage uses
half the dilation). This builder does both, with the parameter names of Detectron2's ResNet, so
weights converted by ``tools/convert_to_d2.py`` load with no missing key.
"""
from typing import List

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet
from detectron2.projects.deeplab.resnet import DeepLabStem

__all__ = ["DilatedBasicBlock", "build_resnet_dilated_backbone", "stage_dilations"]

_BLOCKS_PER_STAGE = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
}


class DilatedBasicBlock(BasicBlock):
    """:class:`BasicBlock` whose first 3x3 conv is dilated (mmseg's BasicBlock; torchvision's
    refuses dilation > 1). Same parameters and names as :class:`BasicBlock`."""

    def __init__(self, in_channels, out_channels, *, stride=1, norm="BN", dilation=1):
        super().__init__(in_channels, out_channels, stride=stride, norm=norm)
        # Only padding/dilation change, so checkpoints of the plain block load unchanged.
        self.conv1.dilation = (dilation, dilation)
        self.conv1.padding = (dilation, dilation)


def stage_dilations(
    num_blocks: int, dilation: int, contract: bool, multi_grid: List[int] = ()
) -> List[int]:
    """Dilation of every block of a stage.

    Args:
        num_blocks: blocks in the stage.
        dilation: the stage's dilation.
        contract: mmseg's ``contract_dilation``: the first block uses ``dilation // 2``.
        multi_grid: per-block multipliers (DeepLab's res5 multi-grid); empty = all 1.

    Returns:
        one dilation per block.
    """
    grid = list(multi_grid) if multi_grid else [1] * num_blocks
    if len(grid) != num_blocks:
        raise ValueError(f"multi-grid {list(grid)} needs one entry per block ({num_blocks})")
    out = [dilation * g for g in grid]
    if contract and dilation > 1 and not multi_grid:
        out[0] = dilation // 2
    return out


@BACKBONE_REGISTRY.register()
def build_resnet_dilated_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> ResNet:
    """ResNet with dilated, stride-1 res4 / res5 (``MODEL.RESNETS.RES4_DILATION`` /
    ``RES5_DILATION``; 2 and 4 give output stride 8), for depths 18 to 152.

    ``MODEL.RESNETS.STEM_TYPE`` "basic" is the torchvision stem (what converted SS-PRL weights
    have), "deeplab" DeepLab's three-conv stem. ``MODEL.RESNETS.RES5_MULTI_GRID`` multiplies the
    res5 dilations ([1, 1, 1] = none); ``MODEL.DILATED_RESNET.CONTRACT_DILATION`` halves the
    first block's dilation of each dilated stage (ignored in res5 with a non-trivial multi-grid).
    """
    r = cfg.MODEL.RESNETS
    depth, norm = r.DEPTH, r.NORM
    if depth not in _BLOCKS_PER_STAGE:
        raise ValueError(f"MODEL.RESNETS.DEPTH must be one of {sorted(_BLOCKS_PER_STAGE)}")
    if r.STEM_TYPE == "basic":
        stem = BasicStem(input_shape.channels, r.STEM_OUT_CHANNELS, norm=norm)
    elif r.STEM_TYPE == "deeplab":
        stem = DeepLabStem(input_shape.channels, r.STEM_OUT_CHANNELS, norm=norm)
    else:
        raise ValueError(f"MODEL.RESNETS.STEM_TYPE must be 'basic' or 'deeplab', got {r.STEM_TYPE}")
    dilation_of = {4: r.RES4_DILATION, 5: r.RES5_DILATION}
    for stage, d in dilation_of.items():
        if d not in (1, 2, 4):
            raise ValueError(f"MODEL.RESNETS.RES{stage}_DILATION must be 1, 2 or 4, got {d}")
    multi_grid = list(r.RES5_MULTI_GRID)
    if all(g == 1 for g in multi_grid):
        multi_grid = []
    contract = cfg.MODEL.DILATED_RESNET.CONTRACT_DILATION
    basic = depth in (18, 34)
    if basic and (r.RES2_OUT_CHANNELS != 64 or r.NUM_GROUPS != 1):
        raise ValueError("ResNet-18/34 need RES2_OUT_CHANNELS 64 and NUM_GROUPS 1")

    in_channels, out_channels = r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS
    bottleneck_channels = r.NUM_GROUPS * r.WIDTH_PER_GROUP
    max_stage = max({"res2": 2, "res3": 3, "res4": 4, "res5": 5}[f] for f in r.OUT_FEATURES)
    stages = []
    for idx, stage in enumerate(range(2, max_stage + 1)):
        n = _BLOCKS_PER_STAGE[depth][idx]
        dilation = dilation_of.get(stage, 1)
        first_stride = 1 if idx == 0 or dilation > 1 else 2
        kwargs = {
            "num_blocks": n,
            "stride_per_block": [first_stride] + [1] * (n - 1),
            "in_channels": in_channels,
            "out_channels": out_channels,
            "norm": norm,
            "dilation_per_block": stage_dilations(
                n, dilation, contract, multi_grid if stage == 5 else ()
            ),
        }
        if basic:
            kwargs["block_class"] = DilatedBasicBlock
        else:
            kwargs.update(
                block_class=BottleneckBlock,
                bottleneck_channels=bottleneck_channels,
                stride_in_1x1=r.STRIDE_IN_1X1,
                num_groups=r.NUM_GROUPS,
            )
        stages.append(ResNet.make_stage(**kwargs))
        in_channels = out_channels
        out_channels *= 2
        bottleneck_channels *= 2
    return ResNet(stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)
