"""Config set-up shared by every ssprl_d2 entry point (merge, derive, validate, log), and loading
a trained pre-training checkpoint together with its config."""
import logging
import math
import os
from typing import Sequence

import torch
import torch.distributed as dist

from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_setup
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ssprl_d2.checkpoint import SSPRLCheckpointer
from ssprl_d2.config import TASK_PRETRAIN, add_ssprl_config, task_of, validate_config
from ssprl_d2.data.datasets import register_from_config, train_set_size

from .preflight import check_job_inputs, run_preflight

logger = logging.getLogger(__name__)


def finish_distributed() -> None:
    """Wait for every rank, then destroy the process group (no-op without one).

    Call it at the end of a function started by Detectron2's ``launch``, which leaves the group
    alive: with gloo, a rank that exits while its peer still tears down its connections can
    abort ("terminate called without an active exception").
    """
    if dist.is_available() and dist.is_initialized():
        comm.synchronize()
        dist.destroy_process_group()


def load_config(config_file: str = "", opts=()) -> CfgNode:
    """Build a frozen-ready config: Detectron2 defaults + ssprl_d2 keys + file + overrides.

    Also registers datasets named by DATASETS.SSPRL.*, converts epochs to iterations and
    validates the keys of the job, so a bad config fails here and not after an hour.
    """
    cfg = get_cfg()
    add_ssprl_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(_coerce_float_opts(cfg, list(opts)))
    register_from_config(cfg)
    _apply_batch_lr_scaling(cfg)
    _apply_epochs(cfg)
    validate_config(cfg)
    _cpu_amp_fallback(cfg)
    check_job_inputs(cfg)
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


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bfloat16 matmuls / convolutions natively (AVX512-BF16 or AMX)."""
    mkldnn = torch.backends.mkldnn
    return bool(mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _cpu_amp_fallback(cfg: CfgNode) -> None:
    """CPU autocast is bfloat16 only (checked by validate_config); where the CPU lacks native
    bf16 the run falls back to float32."""
    if cfg.SOLVER.AMP.ENABLED and str(cfg.MODEL.DEVICE) == "cpu" and not cpu_supports_bf16():
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


def load_ssprl_checkpoint(
    checkpoint: str, config_file: str = "", opts: Sequence[str] = (), device: str = "cpu"
):
    """Build the SS-PRL model of a pre-training checkpoint and load its weights (eval mode).

    Args:
        checkpoint: a pre-training checkpoint (``OUTPUT_DIR/model_final.pth``).
        config_file: its config; default: ``config.yaml`` next to the checkpoint (written by
            Detectron2's ``default_setup``).
        opts: extra ``KEY VALUE`` overrides.
        device: where the model runs.

    Returns:
        (model, cfg).
    """
    config_file = config_file or os.path.join(os.path.dirname(checkpoint), "config.yaml")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(
            f"No config found for {checkpoint} (looked for {config_file}); pass the pre-training "
            "config with --config."
        )
    cfg = load_config(config_file, ["MODEL.DEVICE", device, *opts])
    if task_of(cfg) != TASK_PRETRAIN:
        raise ValueError(f"{config_file} is not an SS-PRL pre-training config")
    model = build_model(cfg)
    SSPRLCheckpointer(model, trust_pickle=cfg.MODEL.WEIGHTS_TRUST_PICKLE).load(checkpoint)
    model.eval()
    return model, cfg
