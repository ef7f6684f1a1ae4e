"""The SGD / LARS optimizer of pre-training (and of the transfers that use its parameter groups)."""
from typing import Dict, List

import torch
from detectron2.solver.build import maybe_add_gradient_clipping
from torch import nn

from .lars import LARS


_NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def pretrain_param_groups(
    model: nn.Module, base_lr: float, weight_decay: float, exclude_bn_bias: bool
) -> List[Dict]:
    """Two parameter groups: adapted weights, and (when ``exclude_bn_bias``) normalisation
    layers and biases without LARS adaptation and without weight decay."""
    regular, excluded, seen = [], [], set()
    for module in model.modules():
        is_norm = isinstance(module, _NORM_TYPES) or "FrozenBatchNorm" in type(module).__name__
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if exclude_bn_bias and (is_norm or name == "bias"):
                excluded.append(p)
            else:
                regular.append(p)
    groups = [{"params": regular, "lr": base_lr, "weight_decay": weight_decay}]
    if excluded:
        groups.append(
            {"params": excluded, "lr": base_lr, "weight_decay": 0.0, "lars_exclude": True}
        )
    return groups


def build_ssprl_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """SGD or LARS (``SOLVER.OPTIMIZER``) over :func:`pretrain_param_groups`: the optimizer of
    pre-training, segmentation and of detection with LARS."""
    groups = pretrain_param_groups(
        model, cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.LARS.EXCLUDE_BN_BIAS
    )
    sgd_kwargs = dict(
        lr=cfg.SOLVER.BASE_LR,
        momentum=cfg.SOLVER.MOMENTUM,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        nesterov=cfg.SOLVER.NESTEROV,
    )
    if cfg.SOLVER.OPTIMIZER == "LARS":
        return maybe_add_gradient_clipping(cfg, LARS)(
            groups,
            trust_coefficient=cfg.SOLVER.LARS.TRUST_COEFFICIENT,
            clip=cfg.SOLVER.LARS.CLIP,
            eps=cfg.SOLVER.LARS.EPS,
            **sgd_kwargs,
        )
    return maybe_add_gradient_clipping(cfg, torch.optim.SGD)(groups, **sgd_kwargs)
