"""One Detectron2 trainer for the jobs of the project: SS-PRL pre-training, multi-label
classification (linear / fine-tune), Mask R-CNN transfer and FCN semantic segmentation. The job
is picked from ``MODEL.META_ARCHITECTURE`` (see :func:`ssprl_d2.engine.setup.task_of`)."""
import logging
import os
import weakref

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import COCOEvaluator, SemSegEvaluator
from detectron2.projects.deeplab import build_lr_scheduler as build_poly_lr_scheduler
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ssprl_d2.data.segmentation_mapper import (
    build_sem_seg_test_loader,
    build_sem_seg_train_loader,
    load_label_array,
)

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
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        find_unused = task_of(cfg) == TASK_PRETRAIN or (
            task_of(cfg) == TASK_CLASSIFY and cfg.MODEL.CLASSIFIER.MODE == "linear"
        )
        ddp_kwargs = {"broadcast_buffers": False, "find_unused_parameters": find_unused}
        if not cfg.MODEL.DEVICE.startswith("cuda"):
            ddp_kwargs["device_ids"] = None  # CPU DDP (gloo): no device ids
        model = create_ddp_model(model, **ddp_kwargs)
        if cfg.SOLVER.AMP.ENABLED:
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
        self.checkpointer = DetectionCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
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
        return super().build_train_loader(cfg)

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
        hooks = super().build_hooks()
        if task_of(self.cfg) == TASK_PRETRAIN:
            from .hooks import build_pretrain_hooks

            # Insert before the writers (the last hook) so their state is logged this step.
            hooks[-1:-1] = build_pretrain_hooks(self.cfg)
        return hooks


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
