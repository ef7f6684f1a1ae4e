"""LARS: SGD with momentum wrapped by the LARC trust-ratio rule (You et al. 2017), as used by
SwAV and the SS-PRL release (trust coefficient 0.001, no clipping)."""
from typing import Iterable

import torch


class LARS(torch.optim.SGD):
    """SGD whose per-parameter step is scaled by the LARC trust ratio.

    For every parameter p with gradient g and weight decay wd, the gradient handed to SGD is
    ``(g + wd p) * local_lr`` with ``local_lr = trust * |p| / (|g| + wd |p| + eps)``; with
    ``clip`` the factor is ``min(local_lr / lr, 1)`` instead. Parameter groups with
    ``lars_exclude=True`` (BatchNorm, biases when requested) skip the adaptation.

    Args:
        params: parameters or parameter groups (as for :class:`torch.optim.SGD`).
        lr, momentum, weight_decay, nesterov: as for SGD.
        trust_coefficient: LARC's eta.
        clip: LARC "clip" mode.
        eps: numerical guard.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        trust_coefficient: float = 0.001,
        clip: bool = False,
        eps: float = 1e-8,
    ):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                         nesterov=nesterov)
        self.trust_coefficient = trust_coefficient
        self.clip = clip
        self.eps = eps

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        saved_wd = []
        for group in self.param_groups:
            wd = group["weight_decay"]
            saved_wd.append(wd)
            if group.get("lars_exclude", False):
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                p_norm = torch.linalg.vector_norm(p)
                g_norm = torch.linalg.vector_norm(p.grad)
                local_lr = self.trust_coefficient * p_norm / (g_norm + p_norm * wd + self.eps)
                if self.clip:
                    local_lr = torch.clamp(local_lr / group["lr"], max=1.0)
                # Only adapt when both norms are non-zero (fresh or zero-gradient params).
                local_lr = torch.where((p_norm > 0) & (g_norm > 0), local_lr,
                                       torch.ones_like(local_lr))
                if wd:
                    p.grad.add_(p, alpha=wd)
                p.grad.mul_(local_lr)
            # Weight decay was folded into the adapted gradient above.
            group["weight_decay"] = 0.0
        try:
            super().step()
        finally:
            for group, wd in zip(self.param_groups, saved_wd):
                group["weight_decay"] = wd
        return loss
