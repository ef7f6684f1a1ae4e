"""Config set-up shared by every ssprl_d2 entry point: merge, derive, validate, log."""
import logging
import math

import torch
import torch.distributed as dist

from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ssprl_d2.config import add_ssprl_config
from ssprl_d2.evaluation.knn import validate_knn_config
from ssprl_d2.data.mask_format import MASK_FORMATS

from .preflight import run_preflight

logger = logging.getLogger(__name__)

TASK_PRETRAIN = "pretrain"
TASK_CLASSIFY = "classification"
TASK_DETECT = "detection"
TASK_SEGMENT = "segmentation"
# Meta-architectures of the semantic segmentation transfer.
SEGMENT_ARCHS = ("SemanticSegmentor", "SlidingWindowSemanticSegmentor")


def finish_distributed() -> None:
    """Wait for every rank, then destroy the process group (no-op without one).

    Call it at the end of a function started by Detectron2's ``launch``, which leaves the group
    alive: with gloo, a rank that exits while its peer still tears down its connections can
    abort ("terminate called without an active exception").
    """
    if dist.is_available() and dist.is_initialized():
        comm.synchronize()
        dist.destroy_process_group()


def task_of(cfg: CfgNode) -> str:
    """Which of the project's jobs a config describes, from its meta-architecture."""
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch == "SSPRL":
        return TASK_PRETRAIN
    if arch == "MultiLabelClassifier":
        return TASK_CLASSIFY
    if arch in SEGMENT_ARCHS:
        return TASK_SEGMENT
    return TASK_DETECT


def load_config(config_file: str = "", opts=()) -> CfgNode:
    """Build a frozen-ready config: Detectron2 defaults + ssprl_d2 keys + file + overrides.

    Also registers datasets named by DATASETS.SSPRL.*, converts epochs to iterations and
    validates the keys of the job, so a bad config fails here and not after an hour.
    """
    from ssprl_d2.data.datasets import register_from_config  # late: registers on import

    cfg = get_cfg()
    add_ssprl_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(_coerce_float_opts(cfg, list(opts)))
    register_from_config(cfg)
    _apply_batch_lr_scaling(cfg)
    _apply_epochs(cfg)
    validate_config(cfg)
    return cfg


def _coerce_float_opts(cfg: CfgNode, opts: list) -> list:
    """Let ``SOLVER.EPOCHS 20`` mean 20.0: yacs refuses an int for a float key."""
    out = list(opts)
    for i in range(0, len(out) - 1, 2):
        node, ok = cfg, True
        for part in str(out[i]).split("."):
            if not isinstance(node, CfgNode) or part not in node:
                ok = False
                break
            node = node[part]
        value = out[i + 1]
        if ok and isinstance(node, float) and isinstance(value, str):
            try:
                int(value)
            except ValueError:
                continue
            out[i + 1] = value + ".0"
    return out


def setup(args) -> CfgNode:
    """Create the config from ``default_argument_parser()`` args and run Detectron2's setup."""
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    # Before default_setup writes its first file: an unusable OUTPUT_DIR or MODEL.WEIGHTS fails
    # here with the key's name.
    run_preflight(cfg, resume=getattr(args, "resume", False))
    default_setup(cfg, args)
    # Detectron2 sets up its own and the "fvcore" loggers; ours too, for every rank's file.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="ssprl_d2")
    return cfg


def validate_config(cfg: CfgNode) -> None:
    """Raise ``ValueError`` naming the offending key when the config is inconsistent."""
    task = task_of(cfg)
    if task == TASK_PRETRAIN:
        from ssprl_d2.modeling.ssprl import validate_ssprl_config

        validate_ssprl_config(cfg)
        inp = cfg.INPUT.SSPRL
        photometric = max(inp.COLOR_JITTER_PROB, inp.GRAYSCALE_PROB, inp.BLUR_PROB) > 0
        if inp.PHOTOMETRIC_ON == "model" and str(cfg.MODEL.DEVICE) == "cpu" and photometric:
            logger.warning(
                "INPUT.SSPRL.PHOTOMETRIC_ON is 'model' on a CPU MODEL.DEVICE: colour jitter, "
                "grayscale and blur run in the training process (~11 ms per image on one core). "
                "For CPU training, INPUT.SSPRL.PHOTOMETRIC_ON loader does them in the loader "
                "workers, about 8x cheaper."
            )
    elif task == TASK_CLASSIFY:
        from ssprl_d2.modeling.classifier import validate_classifier_config

        validate_classifier_config(cfg)
    elif task == TASK_SEGMENT:
        from ssprl_d2.modeling.semantic_seg import validate_segmentation_config

        validate_segmentation_config(cfg)
    validate_knn_config(cfg)
    if cfg.INPUT.MASK_FORMAT not in MASK_FORMATS:
        raise ValueError(
            f"INPUT.MASK_FORMAT must be one of {MASK_FORMATS}: {cfg.INPUT.MASK_FORMAT!r}"
        )
    if cfg.SOLVER.OPTIMIZER not in ("SGD", "LARS"):
        raise ValueError(f"SOLVER.OPTIMIZER must be 'SGD' or 'LARS', got {cfg.SOLVER.OPTIMIZER!r}")
    if cfg.SOLVER.AMP.PRECISION not in ("float16", "bfloat16"):
        raise ValueError(
            "SOLVER.AMP.PRECISION must be 'float16' or 'bfloat16', "
            f"got {cfg.SOLVER.AMP.PRECISION!r}"
        )
    if cfg.SOLVER.AMP.ENABLED and str(cfg.MODEL.DEVICE) == "cpu":
        _check_cpu_amp(cfg)
    elif cfg.SOLVER.AMP.ENABLED and not str(cfg.MODEL.DEVICE).startswith("cuda"):
        raise ValueError(
            f"SOLVER.AMP.ENABLED needs CUDA or a CPU MODEL.DEVICE, got {cfg.MODEL.DEVICE!r}: set "
            "MODEL.DEVICE cuda or cpu, or SOLVER.AMP.ENABLED False"
        )


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bfloat16 matmuls / convolutions natively (AVX512-BF16 or AMX)."""
    mkldnn = torch.backends.mkldnn
    return bool(mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _check_cpu_amp(cfg: CfgNode) -> None:
    """CPU autocast is bfloat16 only; where the CPU lacks bf16 the run falls back to float32."""
    if cfg.SOLVER.AMP.PRECISION != "bfloat16":
        raise ValueError(
            f"SOLVER.AMP.PRECISION {cfg.SOLVER.AMP.PRECISION!r} is not supported on a CPU "
            "MODEL.DEVICE (float16 autocast needs CUDA): set SOLVER.AMP.PRECISION bfloat16, or "
            "SOLVER.AMP.ENABLED False"
        )
    if not cpu_supports_bf16():
        logger.warning(
            "SOLVER.AMP.ENABLED with bfloat16 on a CPU without native bf16 (AVX512-BF16 / AMX): "
            "training in float32 instead."
        )
        cfg.SOLVER.AMP.ENABLED = False


def _apply_batch_lr_scaling(cfg: CfgNode) -> None:
    ref = cfg.SOLVER.REFERENCE_BATCH_SIZE
    if ref > 0 and ref != cfg.SOLVER.IMS_PER_BATCH:
        factor = cfg.SOLVER.IMS_PER_BATCH / ref
        logger.info(
            f"Scaling BASE_LR {cfg.SOLVER.BASE_LR} and BASE_LR_END {cfg.SOLVER.BASE_LR_END} by "
            f"{factor:.4g} (IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} / reference {ref})"
        )
        cfg.SOLVER.BASE_LR *= factor
        cfg.SOLVER.BASE_LR_END *= factor
        cfg.SOLVER.REFERENCE_BATCH_SIZE = cfg.SOLVER.IMS_PER_BATCH


def train_set_size(cfg: CfgNode) -> int:
    """Number of training images of ``cfg.DATASETS.TRAIN`` (after label-subset filtering)."""
    from detectron2.data import DatasetCatalog

    if task_of(cfg) == TASK_CLASSIFY:
        from ssprl_d2.data.multilabel import get_multilabel_train_dicts

        return len(get_multilabel_train_dicts(cfg))  # after the label subset
    return sum(len(DatasetCatalog.get(name)) for name in cfg.DATASETS.TRAIN)


def _apply_epochs(cfg: CfgNode) -> None:
    """Turn SOLVER.EPOCHS (and epoch-based queue start) into iterations from the dataset size."""
    needs_epochs = cfg.SOLVER.EPOCHS > 0 or (
        task_of(cfg) == TASK_PRETRAIN and cfg.MODEL.SSPRL.QUEUE.START_EPOCH >= 0
    )
    if not needs_epochs:
        return
    n = train_set_size(cfg)
    iters_per_epoch = max(1, n // cfg.SOLVER.IMS_PER_BATCH)
    if cfg.SOLVER.EPOCHS > 0:
        old_max = cfg.SOLVER.MAX_ITER
        cfg.SOLVER.MAX_ITER = int(math.ceil(cfg.SOLVER.EPOCHS * iters_per_epoch))
        # STEPS given as fractions of training (all < 1) become iterations.
        steps = tuple(cfg.SOLVER.STEPS)
        if steps and all(0 < s < 1 for s in steps):
            cfg.SOLVER.STEPS = tuple(int(s * cfg.SOLVER.MAX_ITER) for s in steps)
        elif steps and old_max > 0:
            cfg.SOLVER.STEPS = tuple(int(s * cfg.SOLVER.MAX_ITER / old_max) for s in steps)
        logger.info(
            f"SOLVER.EPOCHS={cfg.SOLVER.EPOCHS} over {n} images at batch "
            f"{cfg.SOLVER.IMS_PER_BATCH} -> MAX_ITER={cfg.SOLVER.MAX_ITER}, "
            f"STEPS={cfg.SOLVER.STEPS}"
        )
    if task_of(cfg) == TASK_PRETRAIN and cfg.MODEL.SSPRL.QUEUE.START_EPOCH >= 0:
        cfg.MODEL.SSPRL.QUEUE.START_ITER = int(cfg.MODEL.SSPRL.QUEUE.START_EPOCH * iters_per_epoch)
        logger.info(f"Queue start epoch -> QUEUE.START_ITER={cfg.MODEL.SSPRL.QUEUE.START_ITER}")
