"""Dataset mapper and loaders of the semantic segmentation transfer (mmseg's VOC / Cityscapes
pipelines expressed with Detectron2 augmentations)."""
import copy
from typing import Dict, List

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from PIL import Image

from .seg_transforms import PadToSize, PhotoMetricDistortion, RandomRatioResize

__all__ = [
    "SemSegDatasetMapper",
    "build_sem_seg_test_loader",
    "build_sem_seg_train_loader",
    "load_label_array",
    "read_label_png",
]


def read_label_png(path: str) -> np.ndarray:
    """Class indices of a label PNG, (H, W) uint8/int. Palette PNGs (VOC ``SegmentationClass``)
    give their indices, not the palette colours that a conversion to "L" would."""
    with Image.open(path) as im:
        if im.mode not in ("P", "L", "I", "I;16"):
            im = im.convert("L")
        return np.asarray(im)


def load_label_array(path: str, dtype=int) -> np.ndarray:
    """``SemSegEvaluator``'s ``sem_seg_loading_fn``: Detectron2's default passes ``copy=False`` to
    ``np.array``, which NumPy 2 refuses for PIL images."""
    return read_label_png(path).astype(dtype)


class SemSegDatasetMapper:
    """Reads an image and its ``sem_seg_file_name``, augments both, and returns
    ``{"image": (3, H, W) uint8, "sem_seg": (H, W) long, "height", "width", ...}``."""

    @configurable
    def __init__(self, is_train: bool, *, augmentations: List[T.Augmentation], image_format: str,
                 ignore_value: int = 255):
        """
        Args:
            is_train: keep the label (train) or drop it (test; evaluators read the files).
            augmentations: applied to the image and label together.
            image_format: of the returned image (see :func:`detection_utils.read_image`).
            ignore_value: label of unlabelled pixels.
        """
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.ignore_value = ignore_value

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict:
        ignore = cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE
        if is_train:
            seg = cfg.INPUT.SEG
            augs = [RandomRatioResize(seg.TRAIN_SCALE, seg.RATIO_RANGE)]
            if cfg.INPUT.CROP.ENABLED:
                augs.append(T.RandomCrop_CategoryAreaConstraint(
                    cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE,
                    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA, ignore))
            if cfg.INPUT.RANDOM_FLIP != "none":
                augs.append(T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                                         vertical=cfg.INPUT.RANDOM_FLIP == "vertical"))
            if seg.PHOTOMETRIC:
                augs.append(PhotoMetricDistortion())
            if seg.PAD_TO_CROP:
                # PIXEL_MEAN is in the input's channel order: the pad is 0 after normalisation.
                color = [round(v) for v in cfg.MODEL.PIXEL_MEAN]
                augs.append(PadToSize(cfg.INPUT.CROP.SIZE, color, ignore))
        else:
            augs = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)]
        return {"is_train": is_train, "augmentations": augs, "image_format": cfg.INPUT.FORMAT,
                "ignore_value": ignore}

    def __call__(self, dataset_dict: Dict) -> Dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)
        sem_seg = None
        if self.is_train:
            sem_seg = read_label_png(dataset_dict.pop("sem_seg_file_name")).astype("double")
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        self.augmentations(aug_input)
        image = aug_input.image
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(aug_input.sem_seg.astype("long"))
        return dataset_dict


def build_sem_seg_train_loader(cfg: CfgNode):
    """Detectron2's train loader over ``DATASETS.TRAIN`` with :class:`SemSegDatasetMapper`."""
    return build_detection_train_loader(cfg, mapper=SemSegDatasetMapper(cfg, True))


def build_sem_seg_test_loader(cfg: CfgNode, dataset_name: str):
    """Detectron2's test loader (one image per batch) with the test-time mapper."""
    return build_detection_test_loader(cfg, dataset_name, mapper=SemSegDatasetMapper(cfg, False))
