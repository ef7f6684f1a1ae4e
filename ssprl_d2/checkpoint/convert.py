"""Convert ResNet checkpoints (ssprl_d2 pre-training, SS-PRL release, SwAV, MoCo, torchvision) to
Detectron2's ``.pkl`` model format, and back to torchvision names.

A file is read by :func:`~ssprl_d2.checkpoint.safe_load.load_checkpoint`, its state dict found by
:func:`extract_state_dict`, and its ResNet mapped to Detectron2 names and validated against the
shapes of Detectron2's ResNet by :func:`convert_state_dict` (the names are in
:mod:`ssprl_d2.checkpoint.resnet_names`). Everything here is a pure function of its inputs except
:func:`convert_checkpoint` (reads a file) and :func:`save_d2_pickle` / :func:`save_torchvision`
(write one).
"""
import os
import pickle
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .resnet_names import (
    d2_to_torchvision_name,
    expected_resnet_shapes,
    find_backbone_prefix,
    infer_depth,
    torchvision_to_d2_name,
)
from .safe_load import ConversionError, load_checkpoint

__all__ = [
    "ConversionResult",
    "extract_state_dict",
    "convert_state_dict",
    "convert_checkpoint",
    "to_d2_model_dict",
    "to_torchvision_state_dict",
    "save_d2_pickle",
    "save_torchvision",
    "required_config",
    "D2_AUTHOR",
]

# Written into the ``__author__`` field of the output ``.pkl``.
D2_AUTHOR = "ssprl_d2 convert_to_d2"

# Wrapper keys under which training scripts store the state dict, tried in this order.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "model_state", "net", "network")


@dataclass
class ConversionResult:
    """Outcome of :func:`convert_state_dict`.

    Attributes:
        model: Detectron2 ResNet names (no ``backbone.`` prefix) -> float32 / int64 tensors.
        depth: ResNet depth (18, 34, 50, 101 or 152).
        source_format: "detectron2" or "torchvision" naming of the input.
        prefix: the prefix of the backbone keys in the input (e.g. "module.encoder_q.").
        kept: (input key, Detectron2 name) of every converted tensor.
        dropped: input keys that are not backbone tensors (heads, prototypes, queues, fc, ...).
        unmapped: input keys that look like backbone tensors but have no Detectron2 name.
        filled: Detectron2 names absent from the input and filled with a default
            (only ``num_batches_tracked`` counters, which older checkpoints lack).
    """

    model: Dict[str, torch.Tensor]
    depth: int
    source_format: str
    prefix: str
    kept: List[Tuple[str, str]] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)
    unmapped: List[str] = field(default_factory=list)
    filled: List[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------- state dict
def _is_tensor_like(v: Any) -> bool:
    return isinstance(v, torch.Tensor) or (isinstance(v, np.ndarray) and v.dtype != object)


def extract_state_dict(obj: Any) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """Find the state dict inside a loaded checkpoint and return it as tensors.

    Unwraps ``{"state_dict": ...}``, ``{"model": ...}`` (Detectron2, ssprl_d2) and similar
    wrappers, possibly nested.

    Args:
        obj: what :func:`load_checkpoint` returned.

    Returns:
        (state dict of tensors, keys of non-tensor entries that were skipped).

    Raises:
        ConversionError: no tensors found.
    """
    for _ in range(4):
        if not isinstance(obj, Mapping):
            break
        inner = next(
            (obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping) and obj[k]), None
        )
        if inner is None or (sum(_is_tensor_like(v) for v in obj.values()) > len(obj) // 2):
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ConversionError(
            f"not a checkpoint: expected a dict of tensors, got {type(obj).__name__}"
        )
    state, skipped = {}, []
    for k, v in obj.items():
        if isinstance(k, str) and _is_tensor_like(v):
            state[k] = torch.as_tensor(v) if isinstance(v, np.ndarray) else v
        else:
            skipped.append(str(k))
    if not state:
        raise ConversionError("not a checkpoint: no tensors found in the file")
    return state, skipped


def _identity_if_d2_name(name: str) -> Optional[str]:
    return name if d2_to_torchvision_name(name) is not None else None


# ------------------------------------------------------------------------------------ convert
def _list(items: Sequence, limit: int = 10) -> str:
    items = list(items)
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(str(i) for i in items[:limit]) + more


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    depth: Optional[int] = None,
    prefix: Optional[str] = None,
) -> ConversionResult:
    """Map a ResNet state dict (any supported naming/prefix) to Detectron2 names and validate it.

    Every tensor of Detectron2's ResNet of the (inferred) depth must be present with its exact
    shape; ``num_batches_tracked`` counters may be absent (filled with 0).

    Args:
        state_dict: tensors, e.g. from :func:`extract_state_dict`.
        depth: ResNet depth; None = infer from the blocks per stage.
        prefix: prefix of the backbone keys; None = detect (see :func:`find_backbone_prefix`).

    Returns:
        a :class:`ConversionResult`.

    Raises:
        ConversionError: not a ResNet, unknown depth, missing / unexpected / mis-shaped tensors.
    """
    naming, prefix = find_backbone_prefix(list(state_dict), prefix)
    if naming == "torchvision":
        to_d2 = torchvision_to_d2_name
    else:
        to_d2 = _identity_if_d2_name
    backbone_roots = ("conv1.", "bn1.", "layer") if naming == "torchvision" else ("stem.", "res")
    model: Dict[str, torch.Tensor] = {}
    kept, dropped, unmapped = [], [], []
    for key in sorted(state_dict):
        rest = key[len(prefix):] if key.startswith(prefix) else None
        name = to_d2(rest) if rest is not None else None
        if name is not None:
            kept.append((key, name))
            model[name] = state_dict[key]
        elif rest is not None and rest.startswith(backbone_roots):
            unmapped.append(key)
        else:
            dropped.append(key)

    if depth is None:
        depth = infer_depth(list(model))
    expected = expected_resnet_shapes(depth)
    missing = [n for n in expected if n not in model and not n.endswith("num_batches_tracked")]
    unexpected = [n for n in model if n not in expected]
    wrong = [
        f"{n}: {tuple(model[n].shape)} in checkpoint, {expected[n]} in ResNet-{depth}"
        for n in expected
        if n in model and tuple(model[n].shape) != expected[n]
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): {_list(missing)}")
    if wrong:
        problems.append(f"{len(wrong)} tensor(s) with the wrong shape: {_list(wrong)}")
    if unexpected:
        problems.append(f"{len(unexpected)} tensor(s) not in a ResNet-{depth}: {_list(unexpected)}")
    if problems:
        raise ConversionError(
            f"the checkpoint is not a complete ResNet-{depth} backbone ({naming} naming, prefix "
            f"{prefix!r}): " + "; ".join(problems)
        )
    filled = [n for n in expected if n not in model]
    for n in filled:
        model[n] = torch.zeros((), dtype=torch.long)
    model = {n: _canonical(model[n]) for n in expected}
    return ConversionResult(
        model=model,
        depth=depth,
        source_format=naming,
        prefix=prefix,
        kept=kept,
        dropped=dropped,
        unmapped=unmapped,
        filled=filled,
    )


def _canonical(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu()
    if t.is_floating_point():
        return t.float().contiguous()
    return t.long().contiguous()


def convert_checkpoint(
    path: str,
    depth: Optional[int] = None,
    prefix: Optional[str] = None,
    trust_pickle: bool = False,
) -> ConversionResult:
    """:func:`load_checkpoint` + :func:`extract_state_dict` + :func:`convert_state_dict`.

    Non-tensor entries of the state dict are reported in ``dropped``.
    """
    state, skipped = extract_state_dict(load_checkpoint(path, trust_pickle=trust_pickle))
    result = convert_state_dict(state, depth=depth, prefix=prefix)
    result.dropped.extend(skipped)
    return result


# ------------------------------------------------------------------------------------ output
def to_d2_model_dict(result: ConversionResult) -> Dict[str, Any]:
    """The Detectron2 ``.pkl`` content: names without ``backbone.``, numpy arrays, and
    ``matching_heuristics`` so :class:`DetectionCheckpointer` maps them into any model that
    contains the ResNet (``backbone.bottom_up.res2...`` in an FPN)."""
    return {
        "model": {n: t.numpy() for n, t in result.model.items()},
        "__author__": D2_AUTHOR,
        "matching_heuristics": True,
    }


def to_torchvision_state_dict(result: ConversionResult) -> Dict[str, torch.Tensor]:
    """torchvision ResNet names (``torchvision.models.resnetNN`` loads it with
    ``strict=False``; only ``fc.*`` is missing)."""
    return {d2_to_torchvision_name(n): t.clone() for n, t in result.model.items()}


def save_d2_pickle(result: ConversionResult, path: str) -> None:
    """Write :func:`to_d2_model_dict` with pickle."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(to_d2_model_dict(result), f)


def save_torchvision(result: ConversionResult, path: str) -> None:
    """Write :func:`to_torchvision_state_dict` with ``torch.save``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(to_torchvision_state_dict(result), path)


def required_config(depth: int) -> List[Tuple[str, Any]]:
    """Config keys a detector needs to use converted torchvision-convention weights.

    The weights expect RGB input normalised with the torchvision mean/std, and the stride-2 conv
    in the 3x3 of the bottleneck (torchvision / ResNet v1.5), not in the 1x1 (Caffe2 MSRA).
    """
    keys: List[Tuple[str, Any]] = [
        ("INPUT.FORMAT", "RGB"),
        ("MODEL.PIXEL_MEAN", [123.675, 116.280, 103.530]),
        ("MODEL.PIXEL_STD", [58.395, 57.120, 57.375]),
        ("MODEL.RESNETS.STRIDE_IN_1X1", False),
        ("MODEL.RESNETS.DEPTH", depth),
    ]
    if depth in (18, 34):
        keys.append(("MODEL.RESNETS.RES2_OUT_CHANNELS", 64))
    return keys
