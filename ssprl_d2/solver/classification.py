"""Optimizer of the multi-label classifier: SGD with a separate backbone learning rate."""
import logging

import torch
from detectron2.config import CfgNode
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from torch import nn

from ssprl_d2.config.choices import CLASSIFIER_MODES, check_choice

logger = logging.getLogger(__name__)


def build_classifier_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum, weight decay, optional gradient clipping from SOLVER) for a
    :class:`MultiLabelClassifier`.

    ``linear`` mode optimises only the head, at BASE_LR. ``finetune`` optimises everything: the
    head at BASE_LR and the backbone at BASE_LR * MODEL.CLASSIFIER.BACKBONE_LR_FACTOR (the SS-PRL
    release's semi-supervised setting is 0.1 / 0.001). Norm layers use SOLVER.WEIGHT_DECAY_NORM.

    Args:
        cfg: the config.
        model: the classifier (a DDP wrapper is unwrapped).

    Returns:
        the optimizer; each group's "lr" is its initial lr, scaled by the lr scheduler.
    """
    model = getattr(model, "module", model)
    mode = cfg.MODEL.CLASSIFIER.MODE
    check_choice("MODEL.CLASSIFIER.MODE", mode, CLASSIFIER_MODES)
    base_lr = cfg.SOLVER.BASE_LR
    factor = cfg.MODEL.CLASSIFIER.BACKBONE_LR_FACTOR
    common = dict(
        base_lr=base_lr,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    if mode == "linear":
        params = get_default_optimizer_params(model.head, **common)
        summary = f"head only, lr {base_lr}"
    else:  # "finetune"
        params = get_default_optimizer_params(
            model,
            lr_factor_func=lambda name: factor if name.startswith("backbone.") else 1.0,
            **common,
        )
        summary = f"head lr {base_lr}, backbone lr {base_lr * factor:.6g}"
    if not params:
        raise ValueError("The classifier has no trainable parameters.")
    n_params = sum(p.numel() for g in params for p in g["params"])
    logger.info(f"Classifier optimizer ({mode}): {summary}, {n_params} trainable parameters.")
    optimizer_cls = maybe_add_gradient_clipping(cfg, torch.optim.SGD)
    return optimizer_cls(
        params,
        lr=base_lr,
        momentum=cfg.SOLVER.MOMENTUM,
        nesterov=cfg.SOLVER.NESTEROV,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
    )
