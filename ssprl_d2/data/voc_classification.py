"""VOC 2007 multi-label classification sets: reading ``ImageSets/Main`` lists with their XML
annotations, and the registration of ``voc_2007_{trainval,test}_cls``.

Importing this module registers those two names under ``$DETECTRON2_DATASETS/VOC2007``
(annotations are read on first use); :mod:`ssprl_d2.data` imports it.
"""
import os
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip


def load_voc_cls_dicts(
    dirname: str, split: str, class_names: Sequence[str] = VOC_CLASSES
) -> List[Dict]:
    """Read a VOC ``ImageSets/Main/<split>.txt`` list and its XML annotations.

    Args:
        dirname: the VOC folder (holds Annotations/, ImageSets/, JPEGImages/).
        split: e.g. "trainval" or "test".
        class_names: class order; an object of another name raises ``ValueError``.

    Returns:
        dataset dicts with "annotations" = [{"category_id", "difficult"}] per object.
    """
    list_file = os.path.join(dirname, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(list_file):
        raise FileNotFoundError(
            f"VOC image list {list_file} not found; put VOC2007 under $DETECTRON2_DATASETS."
        )
    with open(list_file) as f:
        image_ids = [line.split()[0] for line in f if line.strip()]
    index = {name: i for i, name in enumerate(class_names)}
    dicts, unknown = [], {}
    for image_id in image_ids:
        xml_file = os.path.join(dirname, "Annotations", f"{image_id}.xml")
        root = ET.parse(xml_file).getroot()
        size = root.find("size")
        annotations = []
        for obj in root.findall("object"):
            name = obj.findtext("name", "").strip()
            if name not in index:
                unknown.setdefault(name, xml_file)
                continue
            difficult = int(float(obj.findtext("difficult", "0").strip() or 0))
            annotations.append({"category_id": index[name], "difficult": difficult})
        record = {
            "file_name": os.path.join(dirname, "JPEGImages", f"{image_id}.jpg"),
            "image_id": image_id,
            "annotations": annotations,
        }
        if size is not None:
            record["height"] = int(size.findtext("height"))
            record["width"] = int(size.findtext("width"))
        dicts.append(record)
    if unknown:
        raise ValueError(
            f"Unknown VOC class names {sorted(unknown)} (e.g. in {next(iter(unknown.values()))}); "
            f"expected one of {list(class_names)}."
        )
    return dicts


def register_voc_cls(name: str, dirname: str, split: str, year: int = 2007) -> None:
    """Register a VOC multi-label classification set (annotations read on first use)."""
    DatasetCatalog.register(name, lambda: load_voc_cls_dicts(dirname, split))
    MetadataCatalog.get(name).set(
        thing_classes=list(VOC_CLASSES), dirname=dirname, split=split, year=year,
        evaluator_type="multilabel",
    )


def register_all_voc_cls(root: Optional[str] = None) -> None:
    """Register ``voc_2007_trainval_cls`` and ``voc_2007_test_cls`` under ``root``/VOC2007."""
    root = root or os.getenv("DETECTRON2_DATASETS", "datasets")
    for split in ("trainval", "test"):
        name = f"voc_2007_{split}_cls"
        if name not in DatasetCatalog.list():
            register_voc_cls(name, os.path.join(root, "VOC2007"), split)


register_all_voc_cls()
