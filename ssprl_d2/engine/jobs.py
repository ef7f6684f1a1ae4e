"""One trainer per job, each overriding only the builders its job needs (as Detectron2's
projects do), and :func:`trainer_class`, which picks the trainer from the config's
meta-architecture (:func:`ssprl_d2.config.task_of`)."""
import logging
import os
from typing import Dict, List, Type

from detectron2.config import CfgNode
from detectron2.engine import HookBase
from detectron2.evaluation import COCOEvaluator, SemSegEvaluator
from detectron2.solver import build_optimizer as build_d2_optimizer

from ssprl_d2.config import TASK_CLASSIFY, TASK_DETECT, TASK_PRETRAIN, TASK_SEGMENT, task_of
from ssprl_d2.data import build_pretrain_train_loader, prepare_datasets
from ssprl_d2.data.classification_loader import (
    build_multilabel_test_loader,
    build_multilabel_train_loader,
)
from ssprl_d2.data.mask_format import build_instance_train_loader
from ssprl_d2.data.segmentation_mapper import (
    build_sem_seg_test_loader,
    build_sem_seg_train_loader,
    load_label_array,
)
from ssprl_d2.evaluation import MultiLabelEvaluator
from ssprl_d2.solver import build_classifier_optimizer, build_ssprl_optimizer

from .fast_linear import run_fast_linear
from .hooks import build_pretrain_hooks
from .trainer import SSPRLTrainerBase

logger = logging.getLogger(__name__)

__all__ = [
    "ClassificationTrainer",
    "DetectionTrainer",
    "PretrainTrainer",
    "SegmentationTrainer",
    "TRAINERS",
    "build_trainer",
    "trainer_class",
]


def _inference_dir(cfg: CfgNode, output_folder) -> str:
    return output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")


class PretrainTrainer(SSPRLTrainerBase):
    """SS-PRL pre-training: the pyramid loader, SGD / LARS, the loss summary and kNN monitor."""

    @classmethod
    def find_unused_parameters(cls, cfg):
        return True  # prototypes and cross-scale learners are frozen for the first iterations

    @classmethod
    def build_train_loader(cls, cfg):
        return build_pretrain_train_loader(cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        raise NotImplementedError(
            "SS-PRL pre-training has no evaluator: evaluate the converted weights with the "
            "classification or detection configs (see README)."
        )

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        logger.info("Pre-training job: nothing to evaluate.")
        return {}

    def job_hooks(self) -> List[HookBase]:
        return build_pretrain_hooks(self.cfg)


class ClassificationTrainer(SSPRLTrainerBase):
    """Multi-label classification (linear evaluation or fine-tuning), reporting mAP."""

    @classmethod
    def find_unused_parameters(cls, cfg):
        return cfg.MODEL.CLASSIFIER.MODE == "linear"  # the frozen backbone gets no gradient

    @classmethod
    def train_job(cls, cfg, resume=False):
        if cfg.MODEL.CLASSIFIER.FAST_LINEAR.ENABLED:
            return run_fast_linear(cfg)
        return super().train_job(cfg, resume)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_multilabel_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_multilabel_test_loader(cfg, dataset_name)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_classifier_optimizer(cfg, model)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return MultiLabelEvaluator(dataset_name, output_dir=_inference_dir(cfg, output_folder))


class DetectionTrainer(SSPRLTrainerBase):
    """Mask R-CNN transfer: mask format from the data, COCO box (and mask) AP."""

    @classmethod
    def build_train_loader(cls, cfg):
        return build_instance_train_loader(cfg)

    @classmethod
    def build_optimizer(cls, cfg, model):
        if cfg.SOLVER.OPTIMIZER == "SGD":
            return build_d2_optimizer(cfg, model)
        return build_ssprl_optimizer(cfg, model)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        prepare_datasets([dataset_name])  # the demo json must exist for COCOEvaluator
        tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
        return COCOEvaluator(
            dataset_name, tasks=tasks, output_dir=_inference_dir(cfg, output_folder)
        )


class SegmentationTrainer(SSPRLTrainerBase):
    """FCN semantic segmentation transfer, reporting mIoU."""

    @classmethod
    def build_train_loader(cls, cfg):
        return build_sem_seg_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_sem_seg_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        # Any split with stuff_classes / ignore_label (VOC aug, Cityscapes, demo): mIoU.
        return SemSegEvaluator(
            dataset_name,
            distributed=True,
            output_dir=_inference_dir(cfg, output_folder),
            sem_seg_loading_fn=load_label_array,
        )


TRAINERS: Dict[str, Type[SSPRLTrainerBase]] = {
    TASK_PRETRAIN: PretrainTrainer,
    TASK_CLASSIFY: ClassificationTrainer,
    TASK_DETECT: DetectionTrainer,
    TASK_SEGMENT: SegmentationTrainer,
}


def trainer_class(cfg: CfgNode) -> Type[SSPRLTrainerBase]:
    """The trainer of ``cfg``'s job."""
    return TRAINERS[task_of(cfg)]


def build_trainer(cfg: CfgNode) -> SSPRLTrainerBase:
    """The trainer of ``cfg``'s job, built from ``cfg``."""
    return trainer_class(cfg)(cfg)
