"""Convert ResNet checkpoints (ssprl_d2 pre-training, SS-PRL release, SwAV, MoCo, torchvision) to
Detectron2's ``.pkl`` model format, and back to torchvision names.

Name mapping (torchvision -> Detectron2)::

    conv1.*                      -> stem.conv1.*
    bn1.*                        -> stem.conv1.norm.*
    layerN.B.convK.weight        -> res{N+1}.B.convK.weight
    layerN.B.bnK.*               -> res{N+1}.B.convK.norm.*
    layerN.B.downsample.0.weight -> res{N+1}.B.shortcut.weight
    layerN.B.downsample.1.*      -> res{N+1}.B.shortcut.norm.*

Everything here is a pure function of its inputs except :func:`load_checkpoint` (reads a file)
and :func:`save_d2_pickle` / :func:`save_torchvision` (write one).
"""
import functools
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch


__all__ = [
    "ConversionError",
    "ConversionResult",
    "load_checkpoint",
    "extract_state_dict",
    "torchvision_to_d2_name",
    "d2_to_torchvision_name",
    "find_backbone_prefix",
    "infer_depth",
    "expected_resnet_shapes",
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

# Blocks per stage (res2..res5) -> depth, for each block type.
_DEPTH_OF_BLOCKS = {
    ("basic", (2, 2, 2, 2)): 18,
    ("basic", (3, 4, 6, 3)): 34,
    ("bottleneck", (3, 4, 6, 3)): 50,
    ("bottleneck", (3, 4, 23, 3)): 101,
    ("bottleneck", (3, 8, 36, 3)): 152,
}

# Wrapper keys under which training scripts store the state dict, tried in this order.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "model_state", "net", "network")

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

# Legacy (pre-1.6, non-zip) torch.save files start with a pickled magic number.
_LEGACY_TORCH_MAGIC = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
_ZIP_MAGIC = b"PK\x03\x04"

# Non-tensor types that the project's own torch checkpoints hold, allowed under
# ``weights_only=True``. Measured on checkpoints of every job (tests/test_weights_trust.py).
SAFE_TORCH_GLOBALS: List[Any] = []


class ConversionError(Exception):
    """A checkpoint cannot be converted; the message says why and what to do."""


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


# ------------------------------------------------------------------------------------ loading
class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles containers and numpy arrays only; any other global is refused before use."""

    _ALLOWED = {
        ("collections", "OrderedDict"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise _DisallowedGlobal(f"{module}.{name}")


class _DisallowedGlobal(pickle.UnpicklingError):
    pass


def _refuse_message(path: str, detail: str, trust_hint: str) -> str:
    return (
        f"{path}: refusing to unpickle: the file contains Python objects other than tensors, "
        f"arrays and containers ({detail}). Unpickling them could run arbitrary code. If you trust "
        f"the file's source, {trust_hint}."
    )


def _corrupt_message(path: str, err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return (
        f"{path}: cannot read the checkpoint: the file is truncated, corrupt or not a checkpoint "
        f"({type(err).__name__}: {first[:200]})"
    )


def load_checkpoint(
    path: str, trust_pickle: bool = False, trust_hint: str = "rerun with --trust-pickle"
) -> Any:
    """Read a checkpoint file without executing code from it (unless ``trust_pickle``).

    The one place of the project that reads a checkpoint from disk (the converter, the
    checkpointer of every job and the start-up checks call it). Handles ``torch.save`` files
    (zip and legacy formats) through ``torch.load(..., weights_only=True)``, which also accepts
    the few non-tensor types of the project's own checkpoints (:data:`SAFE_TORCH_GLOBALS`), and
    plain pickles of numpy arrays (Detectron2 ``.pkl``) through an unpickler that allows arrays
    and containers only. The file's content decides, not its extension.

    Args:
        path: checkpoint file.
        trust_pickle: allow arbitrary pickled objects (``weights_only=False``). Only for files
            from a trusted source.
        trust_hint: how the user opts out, ended into the refusal message (e.g. the config key).

    Returns:
        the unpickled object.

    Raises:
        ConversionError: missing, truncated or corrupt file, or disallowed pickled objects.
    """
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise ConversionError(f"{path}: the file is empty")
    is_torch = head.startswith(_ZIP_MAGIC) or _LEGACY_TORCH_MAGIC in head
    if is_torch:
        try:
            with torch.serialization.safe_globals(SAFE_TORCH_GLOBALS):
                return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
        except pickle.UnpicklingError as e:
            if not trust_pickle and "Weights only load failed" in str(e):
                detail = _unsupported_global(str(e)) or "see torch.load weights_only"
                raise ConversionError(_refuse_message(path, detail, trust_hint)) from None
            raise ConversionError(_corrupt_message(path, e)) from None
        except Exception as e:  # torch raises RuntimeError/EOFError/KeyError/... on bad files
            raise ConversionError(_corrupt_message(path, e)) from None
    # A plain pickle, e.g. a Detectron2 .pkl (Python 2 era files need latin1).
    try:
        with open(path, "rb") as f:
            if trust_pickle:
                return pickle.load(f, encoding="latin1")
            return _ArrayOnlyUnpickler(f, encoding="latin1").load()
    except _DisallowedGlobal as e:
        raise ConversionError(_refuse_message(path, f"global {e}", trust_hint)) from None
    except Exception as e:
        raise ConversionError(_corrupt_message(path, e)) from None


def _unsupported_global(message: str) -> Optional[str]:
    m = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", message, flags=re.IGNORECASE)
    return f"global {m.group(1)}" if m else None


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


# ------------------------------------------------------------------------------------ names
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


def _identity_if_d2_name(name: str) -> Optional[str]:
    return name if d2_to_torchvision_name(name) is not None else None


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
    from detectron2.config import get_cfg

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
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone import build_resnet_backbone

    if depth not in (18, 34, 50, 101, 152):
        raise ConversionError(f"unsupported ResNet depth {depth}; use 18, 34, 50, 101 or 152")
    with torch.device("meta"):
        backbone = build_resnet_backbone(_resnet_cfg(depth), ShapeSpec(channels=3))
    return {k: tuple(v.shape) for k, v in backbone.state_dict().items()}


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
