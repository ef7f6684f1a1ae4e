"""Read checkpoint files without running code from them: the one reader of weights files.

``torch.save`` files (zip and legacy formats) go through ``torch.load(..., weights_only=True)``;
plain pickles (Detectron2 / model-zoo ``.pkl``) through an unpickler that allows numpy arrays and
containers only. Anything else is refused with a message that names the file, what it held and
how to opt out for a trusted file. Missing, empty, truncated and corrupt files raise
:class:`ConversionError` too, so callers handle one exception type.
"""
import os
import pickle
import re
from typing import Any, List, Optional

import torch

__all__ = ["ConversionError", "SAFE_TORCH_GLOBALS", "load_checkpoint"]

# Legacy (pre-1.6, non-zip) torch.save files start with a pickled magic number.
_LEGACY_TORCH_MAGIC = b"\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
_ZIP_MAGIC = b"PK\x03\x04"

# Non-tensor types that the project's own torch checkpoints hold, allowed under
# ``weights_only=True``. Measured on checkpoints of every job (tests/test_weights_trust.py).
SAFE_TORCH_GLOBALS: List[Any] = []


class ConversionError(Exception):
    """A checkpoint cannot be read or converted; the message says why and what to do."""


class _DisallowedGlobal(pickle.UnpicklingError):
    """A global outside the allow-list was met while unpickling (the file is refused)."""


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


def _unsupported_global(message: str) -> Optional[str]:
    m = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", message, flags=re.IGNORECASE)
    return f"global {m.group(1)}" if m else None


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
