"""The one checkpointer of every ssprl_d2 job: safe loading and per-rank state.

:class:`SSPRLCheckpointer` is Detectron2's :class:`DetectionCheckpointer` with two changes:

- Files are read by :func:`ssprl_d2.checkpoint.safe_load.load_checkpoint`, so no weights file runs
  code: torch files with ``weights_only=True``, pickles (Detectron2 / model-zoo ``.pkl``) with an
  unpickler that allows numpy arrays and containers only. ``trust_pickle``
  (``MODEL.WEIGHTS_TRUST_PICKLE``) opts out for a trusted file.
- Modules that mark themselves with ``per_rank_state = True`` (the SS-PRL feature queues) hold a
  different state on every rank. Detectron2 saves rank 0's model only, so the checkpoint also
  stores every rank's copy of those buffers under ``"per_rank_state"`` and each rank restores its
  own on load. A checkpoint from another world size (or without the entry) cannot give each rank
  its own state: those modules are reset (``reset_()``) and refill before they are used again.
"""
import logging
from typing import Dict, List, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils import comm
from torch import nn

from .safe_load import load_checkpoint

__all__ = ["SSPRLCheckpointer", "TRUST_KEY", "read_weights_file"]

logger = logging.getLogger(__name__)

# The config key that opts out of the safe loading; named in every refusal.
TRUST_KEY = "MODEL.WEIGHTS_TRUST_PICKLE"
_TRUST_HINT = f"set {TRUST_KEY} True (the file can then run code)"
_PER_RANK_KEY = "per_rank_state"


def read_weights_file(path: str, trust_pickle: bool = False):
    """Read a weights / checkpoint file the way every job does (see :func:`load_checkpoint`).

    Args:
        path: local file.
        trust_pickle: allow arbitrary pickled objects (``MODEL.WEIGHTS_TRUST_PICKLE``).

    Returns:
        the unpickled object.

    Raises:
        ConversionError: the file is missing, corrupt, or holds objects that could run code; the
            message names the file, what it contained and ``MODEL.WEIGHTS_TRUST_PICKLE``.
    """
    return load_checkpoint(path, trust_pickle=trust_pickle, trust_hint=_TRUST_HINT)


def read_checkpoint_state_dict(path: str, trust_pickle: bool = False) -> Dict[str, object]:
    """The name -> array mapping that :class:`SSPRLCheckpointer` would load from ``path``.

    Handles Detectron2 / Caffe2 ``.pkl`` files and torch checkpoints (``{"model": ...}`` or a bare
    state dict), read without running code (see :func:`read_weights_file`).
    Only names and shapes are used by the callers.
    """
    data = read_weights_file(path, trust_pickle)
    if path.endswith(".pkl") and isinstance(data, dict):
        if "model" in data and "__author__" in data:
            return data["model"]
        return data.get("blobs", data)
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    return data if isinstance(data, dict) else {}


def _per_rank_modules(model: nn.Module) -> Dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if getattr(m, "per_rank_state", False)}


class SSPRLCheckpointer(DetectionCheckpointer):
    """See the module docstring and :class:`DetectionCheckpointer`.

    :meth:`save` gathers the per-rank state from every rank, so in a multi-process job it must be
    called on every rank (Detectron2's ``PeriodicCheckpointer`` does) whenever the model has
    per-rank modules.
    """

    def __init__(self, model, save_dir="", *, trust_pickle: bool = False, **kwargs):
        """
        Args:
            model, save_dir, kwargs: as in :class:`DetectionCheckpointer`.
            trust_pickle: load any pickled object (can run code; trusted files only).
        """
        super().__init__(model, save_dir, **kwargs)
        self.trust_pickle = trust_pickle

    # ------------------------------------------------------------------ reading
    def _load_file(self, filename: str):
        """See :meth:`DetectionCheckpointer._load_file`; reads through the safe loader."""
        if filename.endswith(".pkl"):
            data = read_weights_file(filename, self.trust_pickle)
            if not isinstance(data, dict):
                raise ValueError(f"{filename}: not a Detectron2 .pkl (got {type(data).__name__})")
            if "model" in data and "__author__" in data:  # Detectron2 model-zoo format
                self.logger.info("Reading a file from '{}'".format(data["__author__"]))
                return data
            data = data.get("blobs", data)  # Caffe2 / Detectron1 model zoo
            data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):  # pycls
            data = read_weights_file(filename, self.trust_pickle)
            if not isinstance(data, dict) or "model_state" not in data:
                raise ValueError(f"Cannot load .pyth file {filename}: no 'model_state'.")
            state = {
                k: v
                for k, v in data["model_state"].items()
                if not k.endswith("num_batches_tracked")
            }
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        return super()._load_file(filename)

    def _torch_load(self, f: str):
        data = read_weights_file(f, self.trust_pickle)
        if not isinstance(data, dict):
            raise ValueError(f"{f}: not a checkpoint (got {type(data).__name__})")
        return data

    # ------------------------------------------------------------------ per-rank state
    def save(self, name: str, **kwargs) -> None:
        """See :meth:`Checkpointer.save`; adds every rank's per-rank state (collective)."""
        modules = _per_rank_modules(self.model)
        if modules and comm.get_world_size() > 1:
            mine = {
                f"{prefix}.{b}": t.detach().cpu()
                for prefix, m in modules.items()
                for b, t in m.named_buffers()
            }
            gathered = comm.all_gather(mine)
            if self.save_to_disk:
                kwargs[_PER_RANK_KEY] = gathered
        super().save(name, **kwargs)

    def _load_model(self, checkpoint):
        per_rank: Optional[List[Dict[str, torch.Tensor]]] = checkpoint.pop(_PER_RANK_KEY, None)
        modules = _per_rank_modules(self.model)
        world, reset = comm.get_world_size(), False
        if modules and per_rank is not None and len(per_rank) == world:
            checkpoint["model"].update(per_rank[comm.get_rank()])
        elif modules and world > 1:
            reset = True
        incompatible = super()._load_model(checkpoint)
        if reset:
            saved = "one process" if per_rank is None else f"{len(per_rank)} processes"
            logger.warning(
                f"The checkpoint holds per-rank state ({', '.join(modules)}) of {saved}, this "
                f"job runs {world}: that state is reset and refills before it is used."
            )
            for m in modules.values():
                m.reset_()
        return incompatible
