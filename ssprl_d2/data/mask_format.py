"""Instance-mask format of detection training, chosen from the annotations.

Detectron2's ``DatasetMapper`` turns masks into ``PolygonMasks`` unless ``INPUT.MASK_FORMAT`` is
"bitmask", and stops at the first RLE mask ("Cannot create polygons: Expect a list of polygons
per instance"). COCO jsons converted from segmentation maps (COCO panoptic, most user datasets)
store RLE masks, so ``INPUT.MASK_FORMAT auto`` (the ssprl_d2 default) looks at the training
annotations: any RLE mask makes it "bitmask" (which also rasterises polygons), else "polygon".
"""
import logging
from collections import Counter
from typing import Dict, List

from detectron2.config import CfgNode
from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts

from ssprl_d2.config.choices import MASK_FORMATS, check_choice

from .detection_mapper import SafeDatasetMapper

__all__ = [
    "build_instance_train_loader",
    "count_mask_kinds",
    "resolve_mask_format",
]

logger = logging.getLogger(__name__)


def count_mask_kinds(dataset_dicts: List[Dict]) -> Counter:
    """Number of instance masks of each kind: "polygon" (list of lists) and "rle" (a dict)."""
    kinds = Counter()
    for d in dataset_dicts:
        for ann in d.get("annotations", ()):
            segm = ann.get("segmentation")
            if isinstance(segm, dict):
                kinds["rle"] += 1
            elif isinstance(segm, list):
                kinds["polygon"] += 1
    return kinds


def resolve_mask_format(dataset_dicts: List[Dict], requested: str, source: str = "") -> str:
    """The mask format to train with; logs the choice.

    Args:
        dataset_dicts: the training dicts.
        requested: INPUT.MASK_FORMAT ("auto", "polygon" or "bitmask").
        source: dataset names, for the messages.

    Returns:
        "polygon" or "bitmask".

    Raises:
        ValueError: naming INPUT.MASK_FORMAT, for an unknown value or "polygon" with RLE masks.
    """
    check_choice("INPUT.MASK_FORMAT", requested, MASK_FORMATS)
    kinds = count_mask_kinds(dataset_dicts)
    found = f"{kinds['polygon']} polygon and {kinds['rle']} RLE masks in {source or 'the data'}"
    if requested == "polygon" and kinds["rle"]:
        raise ValueError(
            f"INPUT.MASK_FORMAT is 'polygon' but the training data has {found}: RLE masks cannot "
            "be polygons. Set INPUT.MASK_FORMAT bitmask (or auto)."
        )
    if requested != "auto":
        fmt = requested
    else:
        fmt = "bitmask" if kinds["rle"] else "polygon"
    logger.info(f"Instance masks: {found} -> INPUT.MASK_FORMAT {fmt} (requested: {requested})")
    return fmt


def build_instance_train_loader(cfg: CfgNode):
    """Detectron2's default detection train loader with the mask format resolved from the data
    (see :func:`resolve_mask_format`) and a mapper that skips unreadable images
    (:class:`SafeDatasetMapper`); the same datasets, filtering, sampler and augmentations."""
    dicts = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=(
            cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
        ),
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )
    mapper = SafeDatasetMapper(cfg, is_train=True)
    if cfg.MODEL.MASK_ON:
        fmt = resolve_mask_format(dicts, cfg.INPUT.MASK_FORMAT, ",".join(cfg.DATASETS.TRAIN))
    else:
        fmt = "polygon"  # unused: the mapper drops masks without MASK_ON
    mapper.instance_mask_format = fmt
    return build_detection_train_loader(cfg, mapper=mapper, dataset=dicts)
