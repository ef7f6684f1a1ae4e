"""Multi-label classification targets and the classifier's dataset dicts.

Any detection-style dataset works: an image's targets are the set of ``category_id`` of its
``annotations`` (contiguous ids, as Detectron2's COCO loader produces). An annotation with
``"difficult": 1`` only marks its class "ignore" unless a non-difficult object of that class is
also present (the VOC protocol). The training dicts go through the label subset
(:mod:`.label_subset`); the loaders are in :mod:`.classification_loader`.
"""
import json
import logging
from typing import Dict, List, Optional, Sequence

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog, get_detection_dataset_dicts

from .label_subset import apply_label_subset

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- targets
def multilabel_targets(
    dataset_dict: Dict, num_classes: int, ignore_value: float = -1
) -> np.ndarray:
    """Multi-hot target vector of one image.

    Args:
        dataset_dict: a Detectron2 dataset dict; uses its "labels" if present, else the
            ``category_id`` (contiguous) and optional ``difficult`` flag of its "annotations".
        num_classes: length of the vector.
        ignore_value: value of classes that have only difficult objects.

    Returns:
        float32 (num_classes,): 1 if a non-difficult object of the class is present,
        ``ignore_value`` if only difficult ones are, 0 otherwise.
    """
    if "labels" in dataset_dict:
        labels = np.asarray(dataset_dict["labels"], dtype=np.float32)
        if labels.shape != (num_classes,):
            raise ValueError(
                f"Image {dataset_dict.get('file_name')}: 'labels' has shape {labels.shape}, "
                f"expected ({num_classes},)."
            )
        return labels
    positive = np.zeros(num_classes, dtype=bool)
    difficult = np.zeros(num_classes, dtype=bool)
    bad = set()
    for ann in dataset_dict.get("annotations", []):
        c = ann["category_id"]
        if not 0 <= c < num_classes:
            bad.add(c)
        elif ann.get("difficult", 0):
            difficult[c] = True
        else:
            positive[c] = True
    if bad:
        raise ValueError(
            f"Image {dataset_dict.get('file_name')}: category ids {sorted(bad)} are outside "
            f"[0, {num_classes}) (MODEL.CLASSIFIER.NUM_CLASSES); the dataset's categories do not "
            "match the classifier."
        )
    target = positive.astype(np.float32)
    target[difficult & ~positive] = ignore_value
    return target


def to_multilabel_dicts(
    dataset_dicts: List[Dict], num_classes: int, ignore_value: float = -1, source: str = ""
) -> List[Dict]:
    """Slim copies of ``dataset_dicts`` with a "labels" vector instead of the annotations.

    Images without any positive label are kept (all-negative targets) and counted in a warning.
    """
    out = []
    for d in dataset_dicts:
        slim = {k: d[k] for k in ("file_name", "image_id", "height", "width") if k in d}
        slim["labels"] = multilabel_targets(d, num_classes, ignore_value)
        out.append(slim)
    num_empty = sum(1 for d in out if not np.any(d["labels"] == 1))
    if num_empty:
        logger.warning(
            f"{num_empty} of {len(out)} images{' of ' + source if source else ''} have no "
            "positive label; they are kept as all-negative examples."
        )
    return out


def coco_json_labels(dataset_name: str) -> Optional[Dict[object, List[int]]]:
    """Contiguous category ids of every annotation of each image, read from the dataset's COCO
    json itself (crowd and invalid-polygon annotations included).

    Detectron2's COCO loader drops annotations whose polygons are all invalid, so a class could
    vanish from an image's targets; an image's labels are every category of its annotations.

    Returns:
        image id -> sorted contiguous ids; None if the dataset has no COCO json (e.g. VOC), or
        its metadata has no ``thing_dataset_id_to_contiguous_id`` (load it first).
    """
    meta = MetadataCatalog.get(dataset_name)
    json_file = meta.get("json_file", None)
    id_map = meta.get("thing_dataset_id_to_contiguous_id", None)
    if not json_file or id_map is None:
        return None
    with open(json_file) as f:
        anns = json.load(f).get("annotations", [])
    labels: Dict[object, set] = {}
    for ann in anns:
        if ann["category_id"] in id_map:
            labels.setdefault(ann["image_id"], set()).add(id_map[ann["category_id"]])
    return {k: sorted(v) for k, v in labels.items()}


def _dicts_with_json_labels(names: Sequence[str]) -> List[Dict]:
    """``get_detection_dataset_dicts`` of ``names`` (no filtering), with the annotations of COCO
    json datasets replaced by one per category of :func:`coco_json_labels`."""
    out = []
    for name in names:
        dicts = get_detection_dataset_dicts([name], filter_empty=False)
        labels = coco_json_labels(name)
        if labels is not None:
            dicts = [
                dict(d, annotations=[{"category_id": c} for c in labels.get(d["image_id"], [])])
                for d in dicts
            ]
        out.extend(dicts)
    return out


# --------------------------------------------------------------------------- dataset dicts
def check_num_classes(dataset_name: str, num_classes: int) -> Optional[int]:
    """Raise if the metadata of ``dataset_name`` lists a class count other than ``num_classes``.

    Returns the dataset's class count, or None when its metadata has no ``thing_classes`` yet
    (COCO jsons fill it in only when loaded; the loaders check again then).
    """
    classes = MetadataCatalog.get(dataset_name).get("thing_classes", None)
    if classes is None:
        return None
    if len(classes) != num_classes:
        raise ValueError(
            f"Dataset {dataset_name!r} has {len(classes)} classes but MODEL.CLASSIFIER.NUM_CLASSES "
            f"is {num_classes}."
        )
    return len(classes)


def get_multilabel_train_dicts(cfg: CfgNode) -> List[Dict]:
    """Training dicts of ``cfg.DATASETS.TRAIN`` with "labels", after the label subset.

    Use its length for epoch-based schedules of classification jobs.
    """
    ccfg = cfg.MODEL.CLASSIFIER
    names = list(cfg.DATASETS.TRAIN)
    dicts = _dicts_with_json_labels(names)
    for name in names:
        check_num_classes(name, ccfg.NUM_CLASSES)
    dcfg = cfg.DATASETS.CLASSIFICATION
    if dcfg.LABEL_SUBSET:
        dicts = apply_label_subset(
            dicts, dcfg.LABEL_SUBSET, dcfg.LABEL_SUBSET_FRACTION, dcfg.LABEL_SUBSET_SEED
        )
    return to_multilabel_dicts(dicts, ccfg.NUM_CLASSES, ccfg.IGNORE_VALUE, ",".join(names))


def get_multilabel_test_dicts(cfg: CfgNode, dataset_name: str) -> List[Dict]:
    """Every image of ``dataset_name`` with its "labels"."""
    ccfg = cfg.MODEL.CLASSIFIER
    dicts = _dicts_with_json_labels([dataset_name])
    check_num_classes(dataset_name, ccfg.NUM_CLASSES)
    return to_multilabel_dicts(dicts, ccfg.NUM_CLASSES, ccfg.IGNORE_VALUE, dataset_name)
