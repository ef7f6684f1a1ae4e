"""One Detectron2 trainer for the jobs of the project: SS-PRL pre-training, multi-label
classification (linear / fine-tune), Mask R-CNN transfer and FCN semantic segmentation. The job
is picked from ``MODEL.META_ARCHITECTURE`` (see :func:`ssprl_d2.engine.setup.task_of`)."""
import logging
import os
import time
import weakref

import torch
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import COCOEvaluator, SemSegEvaluator
from detectron2.projects.deeplab import build_lr_scheduler as build_poly_lr_scheduler
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ssprl_d2.checkpoint import SSPRLCheckpointer
from ssprl_d2.data.image_io import SkippedImagesLogger
from ssprl_d2.data.mask_format import build_instance_train_loader
from ssprl_d2.data.segmentation_mapper import (
    build_sem_seg_test_loader,
    build_sem_seg_train_loader,
    load_label_array,
)

from .preflight import check_output_dir, checkpoint_bytes
from .setup import TASK_CLASSIFY, TASK_DETECT, TASK_PRETRAIN, TASK_SEGMENT, task_of

logger = logging.getLogger(__name__)


class Trainer(DefaultTrainer):
    """:class:`DefaultTrainer` with the project's loaders, optimizers, evaluators and hooks."""

    def __init__(self, cfg):
        # Same workflow as DefaultTrainer, plus: AMP precision from config, and DDP that tolerates
        # parameters without gradient (prototypes are frozen during the first iterations).
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        self.cfg = cfg
        model = self.build_model(cfg)
        if comm.is_main_process():  # only rank 0 writes checkpoints
            check_output_dir(cfg.OUTPUT_DIR, checkpoint_bytes(model))
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        find_unused = task_of(cfg) == TASK_PRETRAIN or (
            task_of(cfg) == TASK_CLASSIFY and cfg.MODEL.CLASSIFIER.MODE == "linear"
        )
        ddp_kwargs = {"broadcast_buffers": False, "find_unused_parameters": find_unused}
        if not cfg.MODEL.DEVICE.startswith("cuda"):
            ddp_kwargs["device_ids"] = None  # CPU DDP (gloo): no device ids
        model = create_ddp_model(model, **ddp_kwargs)
        if cfg.SOLVER.AMP.ENABLED and cfg.MODEL.DEVICE == "cpu":
            # validate_config allows only bfloat16 here.
            self._trainer = CPUAutocastTrainer(model, data_loader, optimizer)
        elif cfg.SOLVER.AMP.ENABLED:
            precision = getattr(torch, cfg.SOLVER.AMP.PRECISION)
            grad_scaler = None
            if precision == torch.bfloat16:
                # bf16 has the float32 exponent range: no loss scaling needed.
                grad_scaler = _NoOpGradScaler()
            self._trainer = AMPTrainer(
                model, data_loader, optimizer, precision=precision, grad_scaler=grad_scaler
            )
        else:
            self._trainer = SimpleTrainer(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SSPRLCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            trust_pickle=cfg.MODEL.WEIGHTS_TRUST_PICKLE,
            trainer=weakref.proxy(self),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume=True):
        """See :meth:`DefaultTrainer.resume_or_load`; also positions resumable data streams."""
        super().resume_or_load(resume=resume)
        sampler = getattr(self._trainer.data_loader, "ssprl_sampler", None)
        if sampler is not None:
            sampler.set_start_iter(self.start_iter)

    # ---------------------------------------------------------------- builders
    @classmethod
    def build_train_loader(cls, cfg):
        task = task_of(cfg)
        if task == TASK_PRETRAIN:
            from ssprl_d2.data.build import build_pretrain_train_loader

            return build_pretrain_train_loader(cfg)
        if task == TASK_CLASSIFY:
            from ssprl_d2.data.multilabel import build_multilabel_train_loader

            return build_multilabel_train_loader(cfg)
        if task == TASK_SEGMENT:
            return build_sem_seg_train_loader(cfg)
        return build_instance_train_loader(cfg)  # default loader, mask format from the data

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        if task_of(cfg) == TASK_CLASSIFY:
            from ssprl_d2.data.multilabel import build_multilabel_test_loader

            return build_multilabel_test_loader(cfg, dataset_name)
        if task_of(cfg) == TASK_SEGMENT:
            return build_sem_seg_test_loader(cfg, dataset_name)
        return super().build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        task = task_of(cfg)
        if task == TASK_PRETRAIN:
            raise NotImplementedError(
                "SS-PRL pre-training has no evaluator: evaluate the converted weights with the "
                "classification or detection configs (see README)."
            )
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        if task == TASK_CLASSIFY:
            from ssprl_d2.evaluation import MultiLabelEvaluator

            return MultiLabelEvaluator(dataset_name, output_dir=output_folder)
        if task == TASK_SEGMENT:
            # Any split with stuff_classes / ignore_label (VOC aug, Cityscapes, demo): mIoU.
            return SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder,
                                   sem_seg_loading_fn=load_label_array)
        from ssprl_d2.data import prepare_datasets

        prepare_datasets([dataset_name])  # the demo json must exist for COCOEvaluator
        tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
        return COCOEvaluator(dataset_name, tasks=tasks, output_dir=output_folder)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        # DeepLab's builder: "WarmupPolyLR" (segmentation), else Detectron2's schedulers.
        return build_poly_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_optimizer(cls, cfg, model):
        from ssprl_d2.solver import build_optimizer

        return build_optimizer(cfg, model)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        if task_of(cfg) == TASK_PRETRAIN:
            logger.info("Pre-training job: nothing to evaluate.")
            return {}
        return super().test(cfg, model, evaluators)

    def build_hooks(self):
        ret = super().build_hooks()
        if comm.get_world_size() > 1 and not comm.is_main_process():
            # SSPRLCheckpointer.save gathers every rank's queues, so every rank calls it (only
            # rank 0 writes); Detectron2 adds the checkpointer hook on rank 0 only, before eval.
            at = next(i for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook))
            period = self.cfg.SOLVER.CHECKPOINT_PERIOD
            ret.insert(at, hooks.PeriodicCheckpointer(self.checkpointer, period))
        # The skip count of every job. Its all-gather (and the kNN monitor's) must come at the
        # same place in every rank's hook order: before the EvalHook, which is last on ranks > 0
        # and followed by the writers on rank 0 (so they log this step's values).
        extra = [SkippedImagesLogger()]
        if task_of(self.cfg) == TASK_PRETRAIN:
            from .hooks import build_pretrain_hooks

            extra = build_pretrain_hooks(self.cfg) + extra
        at = next(i for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook))
        ret[at:at] = extra
        return ret


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


class _NoOpGradScaler:
    """Stands in for ``GradScaler`` under bf16 AMP: scaling is unnecessary there."""

    def scale(self, loss):
        return loss

    def step(self, optimizer):
        optimizer.step()

    def update(self):
        pass

    def get_scale(self):
        return 1.0

    def is_enabled(self):
        return False

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


__all__ = ["Trainer", "TASK_CLASSIFY", "TASK_DETECT", "TASK_PRETRAIN", "TASK_SEGMENT"]
