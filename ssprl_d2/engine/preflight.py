"""Start-up checks of the paths a job writes to and reads from, so that an unwritable or full
``OUTPUT_DIR``, a missing ``MODEL.WEIGHTS`` or weights / datasets that do not fit the classifier
fail in the first seconds, not at the first checkpoint an hour later."""
import errno
import os
import shutil
import tempfile

from detectron2.config import CfgNode
from detectron2.utils.file_io import PathManager
from torch import nn

from ssprl_d2.checkpoint import read_checkpoint_state_dict
from ssprl_d2.config import TASK_CLASSIFY, task_of
from ssprl_d2.data.multilabel import check_num_classes
from ssprl_d2.modeling.classifier import check_head_compatibility

__all__ = [
    "check_classifier_inputs",
    "check_job_inputs",
    "check_output_dir",
    "check_weights_exist",
    "checkpoint_bytes",
    "run_preflight",
]


# Bytes written and fsync'ed into OUTPUT_DIR at start-up: a full disk refuses them.
_PROBE_BYTES = 1 << 20


def _is_local(path: str) -> bool:
    return "://" not in path


def check_output_dir(output_dir: str, required_bytes: int = 0) -> None:
    """Create ``output_dir`` and prove a file of ``_PROBE_BYTES`` can be written there.

    Args:
        output_dir: cfg.OUTPUT_DIR ("" = nothing is written, nothing to check).
        required_bytes: free space the job needs there (e.g. one checkpoint).

    Raises:
        OSError: naming OUTPUT_DIR, when the folder cannot be created or written, or the disk
            has less than ``max(required_bytes, _PROBE_BYTES)`` free.
    """
    if not output_dir or not _is_local(output_dir):
        return
    try:
        os.makedirs(output_dir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".ssprl_write_check_") as f:
            f.write(b"\0" * _PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        full = " (the disk is full)" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise OSError(
            e.errno,
            f"OUTPUT_DIR {output_dir!r} is not writable{full}: {e.strerror or e}. Set OUTPUT_DIR "
            "to a folder this job can write checkpoints and logs to.",
        ) from None
    free = shutil.disk_usage(output_dir).free
    if free < max(required_bytes, _PROBE_BYTES):
        raise OSError(
            errno.ENOSPC,
            f"OUTPUT_DIR {output_dir!r} has {free / 2**20:.1f} MiB free, but one checkpoint of "
            f"this job needs {required_bytes / 2**20:.1f} MiB. Free space or set OUTPUT_DIR "
            "elsewhere.",
        )


def checkpoint_bytes(model: nn.Module, optimizer_copies: int = 1) -> int:
    """Approximate size of a training checkpoint: the model's state plus the optimizer's
    per-parameter buffers (``optimizer_copies`` per trainable parameter, 1 for SGD momentum)."""
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    trainable = sum(
        p.numel() * p.element_size() for p in model.parameters() if p.requires_grad
    )
    return state + optimizer_copies * trainable


def check_weights_exist(weights: str) -> None:
    """Raise ``FileNotFoundError`` naming MODEL.WEIGHTS if a local weights file is missing or
    unreadable (URLs such as ``detectron2://...`` are left to the checkpointer)."""
    if not weights or not _is_local(weights):
        return
    path = PathManager.get_local_path(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"MODEL.WEIGHTS {weights!r} does not exist. Give a converted Detectron2 .pkl "
            "(tools/convert_to_d2.py), an ssprl_d2 checkpoint, or '' for random init."
        )
    if not os.access(path, os.R_OK):
        raise PermissionError(f"MODEL.WEIGHTS {weights!r} is not readable by this user.")


def _has_checkpoint(output_dir: str) -> bool:
    return bool(output_dir) and os.path.isfile(os.path.join(output_dir, "last_checkpoint"))


def run_preflight(cfg: CfgNode, resume: bool = False) -> None:
    """The start-up checks of a job: OUTPUT_DIR writable, MODEL.WEIGHTS present.

    With ``resume`` and a checkpoint in OUTPUT_DIR the weights are not read (Detectron2 resumes
    from the checkpoint), so they are not checked either.
    """
    check_output_dir(cfg.OUTPUT_DIR)
    if not (resume and _has_checkpoint(cfg.OUTPUT_DIR)):
        check_weights_exist(cfg.MODEL.WEIGHTS)


def check_classifier_inputs(cfg: CfgNode) -> None:
    """The classifier's inputs fit its config: NUM_CLASSES against the ``thing_classes`` of every
    dataset in DATASETS.TRAIN / TEST whose metadata is already known, a local MODEL.WEIGHTS exists
    and its classifier head (if any) has NUM_CLASSES outputs."""
    num_classes = cfg.MODEL.CLASSIFIER.NUM_CLASSES
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        check_num_classes(name, num_classes)
    weights = cfg.MODEL.WEIGHTS
    if weights and _is_local(weights):
        check_weights_exist(weights)
        check_head_compatibility(
            read_checkpoint_state_dict(weights, cfg.MODEL.WEIGHTS_TRUST_PICKLE),
            num_classes,
            f"MODEL.WEIGHTS={weights}",
        )


def check_job_inputs(cfg: CfgNode) -> None:
    """The input checks of ``cfg``'s job that read files or dataset metadata."""
    if task_of(cfg) == TASK_CLASSIFY:
        check_classifier_inputs(cfg)
