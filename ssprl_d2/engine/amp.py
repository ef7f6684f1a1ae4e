"""Step runners for mixed precision: CPU bfloat16 autocast, and the no-op grad scaler of bf16
on CUDA (bf16 has float32's exponent range, so no loss scaling is needed)."""
import time

import torch
from detectron2.config import CfgNode
from detectron2.engine import AMPTrainer, SimpleTrainer


class CPUAutocastTrainer(SimpleTrainer):
    """:class:`SimpleTrainer` whose forward (model and loss sum) runs under
    ``torch.autocast("cpu", bfloat16)``; backward and the optimizer step stay outside autocast,
    as PyTorch recommends. bf16 keeps float32's exponent range, so no loss scaling is needed."""

    def __init__(self, model, data_loader, optimizer, precision: torch.dtype = torch.bfloat16):
        super().__init__(model, data_loader, optimizer)
        self.precision = precision

    def run_step(self):
        # Mirrors SimpleTrainer.run_step of Detectron2 0.6+ (commit a59f0563), forward under
        # CPU autocast (AMPTrainer asserts CUDA).
        assert self.model.training, "[CPUAutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast("cpu", dtype=self.precision):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                loss_dict = {"total_loss": loss_dict}
            losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        losses.backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()


class NoOpGradScaler:
    """Stands in for ``GradScaler`` under bf16 AMP: scaling is unnecessary there."""

    def scale(self, loss):
        return loss

    def step(self, optimizer):
        optimizer.step()

    def update(self):
        pass  # no scale to adapt

    def get_scale(self):
        return 1.0

    def is_enabled(self):
        return False

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass  # stateless: nothing to restore


def build_step_runner(cfg: CfgNode, model, data_loader, optimizer) -> SimpleTrainer:
    """The runner of one training step for ``cfg.SOLVER.AMP``: float32, CUDA AMP (float16 with
    loss scaling, or bfloat16 without), or CPU bfloat16 autocast."""
    if not cfg.SOLVER.AMP.ENABLED:
        return SimpleTrainer(model, data_loader, optimizer)
    if cfg.MODEL.DEVICE == "cpu":
        # validate_config allows only bfloat16 here.
        return CPUAutocastTrainer(model, data_loader, optimizer)
    precision = getattr(torch, cfg.SOLVER.AMP.PRECISION)
    grad_scaler = NoOpGradScaler() if precision == torch.bfloat16 else None
    return AMPTrainer(model, data_loader, optimizer, precision=precision, grad_scaler=grad_scaler)
