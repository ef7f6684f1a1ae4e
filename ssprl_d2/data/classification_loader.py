"""Classification input: the augmentations (RandomResizedCrop / center-crop pipelines of the
SwAV / SS-PRL evaluations), the multi-label dataset mapper and the train / test loaders.
"""
import logging
import sys
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.data import transforms as T
from detectron2.data.samplers import TrainingSampler
from detectron2.utils import comm
from PIL import Image

from .crop_geometry import sample_resized_crop_box
from .image_io import read_image_or_none
from .multilabel import get_multilabel_test_dicts, get_multilabel_train_dicts, multilabel_targets

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- transforms
class RandomResizedCrop(T.Augmentation):
    """Crop a random area fraction in ``scale`` and aspect ratio in ``ratio`` (log-uniform),
    resized to ``size`` x ``size``; after 10 failed draws, the central crop of the clamped ratio
    (the torchvision definition: :func:`ssprl_d2.data.crop_geometry.sample_resized_crop_box`,
    the pre-training mapper's rule).

    Randomness: the box is drawn from torch's global RNG (``generator=None``), like the
    pre-training mapper's default. Detectron2 seeds it per process (``seed_all_rng`` from
    ``SEED``) and per data-loader worker (``worker_init_reset_seed``), so crops are
    reproducible and differ between workers; the flip (``T.RandomFlip``) draws from numpy's
    global RNG, seeded the same way.
    """

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0), interp=None):
        super().__init__()
        interp = Image.BILINEAR if interp is None else interp
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        ratio = (min(self.ratio), max(self.ratio))  # the fallback clamps to the sorted range
        top, left, ch, cw = sample_resized_crop_box(h, w, self.scale, ratio)
        return T.TransformList(
            [
                T.CropTransform(left, top, cw, ch),
                T.ResizeTransform(ch, cw, self.size, self.size, self.interp),
            ]
        )


class CenterCrop(T.Augmentation):
    """The central ``size`` x ``size`` crop (the image must be at least that large)."""

    def __init__(self, size: int):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        if h < self.size or w < self.size:
            raise ValueError(f"CenterCrop({self.size}) of a {w}x{h} image")
        x0 = int(round((w - self.size) / 2.0))
        y0 = int(round((h - self.size) / 2.0))
        return T.CropTransform(x0, y0, self.size, self.size)


def build_classification_augmentation(cfg: CfgNode, is_train: bool) -> List[T.Augmentation]:
    """Train: RandomResizedCrop + horizontal flip; test: shorter side resize + center crop."""
    icfg = cfg.INPUT.CLASSIFICATION
    if is_train:
        augs = [
            RandomResizedCrop(
                icfg.TRAIN_CROP_SIZE, tuple(icfg.TRAIN_CROP_SCALE), tuple(icfg.TRAIN_CROP_RATIO)
            )
        ]
        if icfg.TRAIN_FLIP_PROB > 0:
            augs.append(T.RandomFlip(prob=icfg.TRAIN_FLIP_PROB, horizontal=True, vertical=False))
        return augs
    return [
        T.ResizeShortestEdge(icfg.TEST_RESIZE, max_size=sys.maxsize),
        CenterCrop(icfg.TEST_CROP_SIZE),
    ]


# ------------------------------------------------------------------------------ mapper
class MultiLabelDatasetMapper:
    """Dataset dict -> {"image": CHW uint8 tensor, "labels": float tensor, ...}.

    An unreadable image gives None when ``skip_unreadable`` (training: Detectron2's MapDataset
    then tries another image) and raises otherwise (evaluation must see every image).
    """

    @configurable
    def __init__(
        self,
        is_train: bool = True,
        *,
        augmentations: List[T.Augmentation],
        image_format: str,
        num_classes: int,
        ignore_value: float = -1,
        skip_unreadable: Optional[bool] = None,
    ):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.skip_unreadable = is_train if skip_unreadable is None else skip_unreadable
        mode = "training" if is_train else "inference"
        logger.info(f"[MultiLabelDatasetMapper] Augmentations used in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict:
        return {
            "is_train": is_train,
            "augmentations": build_classification_augmentation(cfg, is_train),
            "image_format": cfg.INPUT.FORMAT,
            "num_classes": cfg.MODEL.CLASSIFIER.NUM_CLASSES,
            "ignore_value": cfg.MODEL.CLASSIFIER.IGNORE_VALUE,
        }

    def __call__(self, dataset_dict: Dict) -> Optional[Dict]:
        image = read_image_or_none(dataset_dict["file_name"], format=self.image_format)
        if image is None:
            if self.skip_unreadable:
                return None
            raise OSError(f"Cannot read image {dataset_dict['file_name']}")
        labels = multilabel_targets(dataset_dict, self.num_classes, self.ignore_value)
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        image = aug_input.image
        out = {k: v for k, v in dataset_dict.items() if k not in ("annotations", "labels")}
        out["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        out["labels"] = torch.as_tensor(labels, dtype=torch.float32)
        return out


# ------------------------------------------------------------------------------ loaders
def build_multilabel_train_loader(cfg: CfgNode):
    """Infinite training loader of ``cfg.DATASETS.TRAIN`` (label subset applied), batches of
    SOLVER.IMS_PER_BATCH images over all processes."""
    dicts = get_multilabel_train_dicts(cfg)
    return build_detection_train_loader(
        dicts,
        mapper=MultiLabelDatasetMapper(cfg, is_train=True),
        sampler=TrainingSampler(len(dicts)),
        total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=False,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )


def inference_batch_size(cfg: CfgNode) -> int:
    """Images per inference batch per process, from TEST.IMS_PER_BATCH (a total) if present."""
    total = cfg.TEST.get("IMS_PER_BATCH", 1)
    return max(1, total // comm.get_world_size())


def build_multilabel_test_loader(cfg: CfgNode, dataset_name: str):
    """Finite loader over every image of ``dataset_name`` (sharded across processes)."""
    return build_detection_test_loader(
        get_multilabel_test_dicts(cfg, dataset_name),
        mapper=MultiLabelDatasetMapper(cfg, is_train=False),
        batch_size=inference_batch_size(cfg),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
