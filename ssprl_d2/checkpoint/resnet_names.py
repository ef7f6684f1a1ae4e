"""ResNet tensor names: torchvision <-> Detectron2, where the backbone sits in a state dict, its
depth, and the names and shapes Detectron2's ResNet of a depth has.

Name mapping (torchvision -> Detectron2)::

    conv1.*                      -> stem.conv1.*
    bn1.*                        -> stem.conv1.norm.*
    layerN.B.convK.weight        -> res{N+1}.B.convK.weight
    layerN.B.bnK.*               -> res{N+1}.B.convK.norm.*
    layerN.B.downsample.0.weight -> res{N+1}.B.shortcut.weight
    layerN.B.downsample.1.*      -> res{N+1}.B.shortcut.norm.*

Every function here is pure (names in, names out).
"""
import functools
import re
from typing import Dict, Optional, Sequence, Tuple

import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import build_resnet_backbone

from .safe_load import ConversionError

__all__ = [
    "torchvision_to_d2_name",
    "d2_to_torchvision_name",
    "find_backbone_prefix",
    "infer_depth",
    "expected_resnet_shapes",
]

# Blocks per stage (res2..res5) -> depth, for each block type.
_DEPTH_OF_BLOCKS = {
    ("basic", (2, 2, 2, 2)): 18,
    ("basic", (3, 4, 6, 3)): 34,
    ("bottleneck", (3, 4, 6, 3)): 50,
    ("bottleneck", (3, 4, 23, 3)): 101,
    ("bottleneck", (3, 8, 36, 3)): 152,
}

# When several backbones are found (MoCo stores encoder_q and encoder_k), the first of these wins.
_PREFERRED_PREFIXES = (
    "",
    "module.",
    "backbone.",
    "module.backbone.",
    "module.encoder_q.",
    "encoder_q.",
    "module.encoder.",
    "encoder.",
    "backbone.bottom_up.",
    "model.",
)

_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_TV_STEM = re.compile(r"^(conv1\.weight|bn1\.(\w+))$")
_TV_BLOCK = re.compile(
    r"^layer([1-4])\.(\d+)\.(conv\d\.weight|bn(\d)\.(\w+)|downsample\.([01])\.(\w+))$"
)
_D2_STEM = re.compile(r"^stem\.conv1\.(weight|norm\.(\w+))$")
_D2_BLOCK = re.compile(r"^res([2-5])\.(\d+)\.(conv\d|shortcut)\.(weight|norm\.(\w+))$")


def torchvision_to_d2_name(name: str) -> Optional[str]:
    """Detectron2 ResNet name of a torchvision ResNet tensor name; None if it is not one.

    >>> torchvision_to_d2_name("layer1.0.downsample.1.running_mean")
    'res2.0.shortcut.norm.running_mean'
    """
    m = _TV_STEM.match(name)
    if m:
        if m.group(2) is None:
            return "stem.conv1.weight"
        return f"stem.conv1.norm.{m.group(2)}" if m.group(2) in _BN_SUFFIXES else None
    m = _TV_BLOCK.match(name)
    if not m:
        return None
    stage, block, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
    base = f"res{stage}.{block}"
    if rest.startswith("conv"):
        return f"{base}.{rest}"
    if rest.startswith("bn"):
        return f"{base}.conv{m.group(4)}.norm.{m.group(5)}" if m.group(5) in _BN_SUFFIXES else None
    which, suffix = m.group(6), m.group(7)
    if which == "0":
        return f"{base}.shortcut.weight" if suffix == "weight" else None
    return f"{base}.shortcut.norm.{suffix}" if suffix in _BN_SUFFIXES else None


def d2_to_torchvision_name(name: str) -> Optional[str]:
    """torchvision ResNet name of a Detectron2 ResNet tensor name; None if it is not one.

    >>> d2_to_torchvision_name("res5.2.conv3.norm.weight")
    'layer4.2.bn3.weight'
    """
    m = _D2_STEM.match(name)
    if m:
        if m.group(2) is None:
            return "conv1.weight"
        return f"bn1.{m.group(2)}" if m.group(2) in _BN_SUFFIXES else None
    m = _D2_BLOCK.match(name)
    if not m:
        return None
    layer, block, module, norm_suffix = int(m.group(1)) - 1, m.group(2), m.group(3), m.group(5)
    base = f"layer{layer}.{block}"
    if norm_suffix is not None and norm_suffix not in _BN_SUFFIXES:
        return None
    if module == "shortcut":
        if norm_suffix is None:
            return f"{base}.downsample.0.weight"
        return f"{base}.downsample.1.{norm_suffix}"
    if norm_suffix is None:
        return f"{base}.{module}.weight"
    return f"{base}.bn{module[4:]}.{norm_suffix}"


def find_backbone_prefix(keys: Sequence[str], prefix: Optional[str] = None) -> Tuple[str, str]:
    """Find where the ResNet lives in a state dict and how it is named.

    A backbone is recognised by its stem and first block: ``P + "conv1.weight"`` and
    ``P + "layer1.0.conv1.weight"`` (torchvision naming) or ``P + "stem.conv1.weight"`` and
    ``P + "res2.0.conv1.weight"`` (Detectron2 naming).

    Args:
        keys: state-dict keys.
        prefix: force this prefix (e.g. "module.encoder_q."); None = detect.

    Returns:
        (naming, prefix) with naming "detectron2" or "torchvision".

    Raises:
        ConversionError: no ResNet found, or several and none preferred.
    """
    keyset = set(keys)
    found: Dict[str, str] = {}
    for k in keyset:
        if k.endswith("stem.conv1.weight"):
            p = k[: -len("stem.conv1.weight")]
            if p + "res2.0.conv1.weight" in keyset:
                found[p] = "detectron2"
        elif k.endswith("conv1.weight"):
            p = k[: -len("conv1.weight")]
            if p + "layer1.0.conv1.weight" in keyset:
                found[p] = "torchvision"
    if not found:
        raise ConversionError(
            "not a ResNet checkpoint: found no stem + first block, i.e. no keys like "
            "'conv1.weight' + 'layer1.0.conv1.weight' (torchvision naming) or "
            "'stem.conv1.weight' + 'res2.0.conv1.weight' (Detectron2 naming), under any prefix. "
            f"First keys: {sorted(keyset)[:8]}"
        )
    if prefix is not None:
        if prefix not in found:
            raise ConversionError(
                f"no ResNet under prefix {prefix!r}; ResNets found under {sorted(found)}"
            )
        return found[prefix], prefix
    if len(found) == 1:
        p = next(iter(found))
        return found[p], p
    for p in _PREFERRED_PREFIXES:
        if p in found:
            return found[p], p
    raise ConversionError(
        f"several ResNets in the checkpoint, under prefixes {sorted(found)}; pick one with --prefix"
    )


def infer_depth(d2_names: Sequence[str]) -> int:
    """ResNet depth from Detectron2 names: blocks per stage and block type (conv3 = bottleneck).

    Raises:
        ConversionError: the block counts match no standard ResNet.
    """
    blocks = {s: set() for s in range(2, 6)}
    bottleneck = False
    for n in d2_names:
        m = _D2_BLOCK.match(n)
        if m:
            blocks[int(m.group(1))].add(int(m.group(2)))
            bottleneck |= m.group(3) == "conv3"
    counts = tuple(len(blocks[s]) for s in range(2, 6))
    kind = "bottleneck" if bottleneck else "basic"
    depth = _DEPTH_OF_BLOCKS.get((kind, counts))
    if depth is None:
        raise ConversionError(
            f"cannot infer the ResNet depth: {kind} blocks per stage res2..res5 = {counts} match "
            "no ResNet-18/34/50/101/152 (a block or stage is missing?). Pass --depth to get the "
            "list of missing tensors."
        )
    return depth


def _resnet_cfg(depth: int):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth in (18, 34) else 256
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    return cfg


@functools.lru_cache(maxsize=None)
def expected_resnet_shapes(depth: int) -> Dict[str, Tuple[int, ...]]:
    """Names and shapes of the state dict of Detectron2's ResNet of this depth (BN norm).

    Built with ``build_resnet_backbone`` on the meta device, so nothing is allocated.
    """
    if depth not in (18, 34, 50, 101, 152):
        raise ConversionError(f"unsupported ResNet depth {depth}; use 18, 34, 50, 101 or 152")
    with torch.device("meta"):
        backbone = build_resnet_backbone(_resnet_cfg(depth), ShapeSpec(channels=3))
    return {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
