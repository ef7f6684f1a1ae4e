"""PASCAL VOC 2012 + SBD augmented semantic segmentation, found the Detectron2 way under
``$DETECTRON2_DATASETS/VOC2012``.

Expected layout (the usual "SegmentationClassAug" release of the SBD labels)::

    VOC2012/JPEGImages/<id>.jpg
    VOC2012/SegmentationClassAug/<id>.png           train labels (10,582 train_aug images)
    VOC2012/SegmentationClass/<id>.png              val labels (the VOC 2012 tarball's)
    VOC2012/ImageSets/Segmentation/train_aug.txt    10,582 ids
    VOC2012/ImageSets/Segmentation/val.txt          1,449 ids

Labels are class indices 0 (background) to 20, 255 = ignored (object boundaries). Importing
this module registers ``voc_2012_sem_seg_train_aug`` and ``voc_2012_sem_seg_val``.
"""
import os
from typing import Dict, List

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["VOC_SEG_CLASSES", "VOC_SEG_SPLITS", "load_voc_sem_seg", "register_voc_sem_seg"]

VOC_SEG_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

# split -> (label folder, list file) under VOC2012/; the datasets are "<prefix>_<split>".
VOC_SEG_SPLITS = {
    "train_aug": ("SegmentationClassAug", "ImageSets/Segmentation/train_aug.txt"),
    "val": ("SegmentationClass", "ImageSets/Segmentation/val.txt"),
}


def _missing_message(name: str, dirname: str, missing: List[str]) -> str:
    return (
        f"Dataset {name!r} (PASCAL VOC 2012 + SBD aug semantic segmentation) expects under "
        f"{dirname!r}: JPEGImages/, SegmentationClassAug/ (train labels), SegmentationClass/ "
        "(val labels), ImageSets/Segmentation/train_aug.txt and val.txt. Missing: "
        + ", ".join(missing)
        + ". Set $DETECTRON2_DATASETS to the folder that holds VOC2012/ (read when detectron2 is "
        "imported)."
    )


def load_voc_sem_seg(name: str, dirname: str, label_dir: str, split_file: str) -> List[Dict]:
    """Records ``{file_name, sem_seg_file_name, image_id}`` of the ids in ``split_file``.

    Args:
        name: dataset name (for messages).
        dirname: the VOC2012 folder; ``label_dir``, ``split_file``: relative to it.

    Raises:
        FileNotFoundError: naming every missing folder / list file, or the first missing label.
    """
    paths = [os.path.join(dirname, p) for p in ("JPEGImages", label_dir, split_file)]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(_missing_message(name, dirname, missing))
    with open(paths[2]) as f:
        ids = [line.split()[0] for line in f if line.strip()]
    records = []
    for image_id in ids:
        label = os.path.join(paths[1], image_id + ".png")
        if not os.path.isfile(label):
            raise FileNotFoundError(f"Dataset {name!r}: label {label!r} of id {image_id!r} "
                                    f"(listed in {paths[2]}) does not exist.")
        records.append({"file_name": os.path.join(paths[0], image_id + ".jpg"),
                        "sem_seg_file_name": label, "image_id": image_id})
    return records


def register_voc_sem_seg(root: str, prefix: str = "voc_2012_sem_seg") -> List[str]:
    """Register ``<prefix>_train_aug`` and ``<prefix>_val`` from ``root/VOC2012`` (nothing is
    read now) and return their names.

    The metadata names ``image_root``, ``sem_seg_root`` and ``split_file`` so that
    :func:`ssprl_d2.data.check_datasets_exist` reports a missing folder at start-up.
    """
    dirname = os.path.join(root, "VOC2012")
    names = []
    for split, (label_dir, split_file) in VOC_SEG_SPLITS.items():
        name = f"{prefix}_{split}"
        names.append(name)
        DatasetCatalog.register(
            name, lambda n=name, d=label_dir, s=split_file: load_voc_sem_seg(n, dirname, d, s)
        )
        MetadataCatalog.get(name).set(
            image_root=os.path.join(dirname, "JPEGImages"),
            sem_seg_root=os.path.join(dirname, label_dir),
            split_file=os.path.join(dirname, split_file),
            stuff_classes=list(VOC_SEG_CLASSES),
            ignore_label=255,
            evaluator_type="sem_seg",
        )
    return names


if "voc_2012_sem_seg_val" not in DatasetCatalog.list():  # tolerate a module reload
    register_voc_sem_seg(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))
