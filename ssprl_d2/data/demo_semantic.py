"""Semantic split of the bundled SYNTHETIC demo dataset: the same images as ``ssprl_demo_train`` /
``ssprl_demo_val``, their instance masks rasterised into one label PNG per image.

Labels: 0 = background, 1 + (contiguous category index) for the 8 demo categories (so class k
of ``DEMO_CATEGORIES`` is label k + 1); objects are painted in annotation order, later on top.
The PNGs are written next to the demo root (``<root>_sem_seg/<split>-<json hash>/``) the first
time a split is loaded, and rewritten whenever the demo json changes. Importing this module
registers ``ssprl_demo_sem_seg_train`` and ``ssprl_demo_sem_seg_val``.
"""
import hashlib
import os
import shutil
import tempfile
from typing import Dict, List

import numpy as np
import pycocotools.mask as mask_util
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from .datasets import DEMO_DATASET_NAMES
from .demo import DEMO_CATEGORIES

__all__ = [
    "DEMO_SEM_SEG_CLASSES",
    "DEMO_SEM_SEG_NAMES",
    "instances_to_label",
    "load_demo_sem_seg",
    "register_demo_sem_seg",
]

DEMO_SEM_SEG_CLASSES = ["background", *DEMO_CATEGORIES]
DEMO_SEM_SEG_NAMES = tuple(
    n.replace("ssprl_demo_", "ssprl_demo_sem_seg_") for n in DEMO_DATASET_NAMES
)


def instances_to_label(annotations: List[Dict], height: int, width: int) -> np.ndarray:
    """(H, W) uint8 label map: 0 background, ``category_id + 1`` under each instance mask
    (polygons or RLE), later annotations painted over earlier ones."""
    label = np.zeros((height, width), dtype=np.uint8)
    for ann in annotations:
        seg = ann["segmentation"]
        if isinstance(seg, list):  # polygons
            rle = mask_util.merge(mask_util.frPyObjects(seg, height, width))
        elif isinstance(seg.get("counts"), list):  # uncompressed RLE
            rle = mask_util.frPyObjects(seg, height, width)
        else:
            rle = seg
        label[mask_util.decode(rle).astype(bool)] = ann["category_id"] + 1
    return label


def _file_sha1(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()[:12]


def load_demo_sem_seg(instances_name: str) -> List[Dict]:
    """Records of the demo split ``instances_name`` with ``sem_seg_file_name`` (written now if
    absent or stale) and without instance annotations."""
    records = DatasetCatalog.get(instances_name)  # generates the demo dataset on first use
    json_file = MetadataCatalog.get(instances_name).json_file
    root = os.path.dirname(os.path.dirname(json_file))
    split = instances_name.rsplit("_", 1)[-1]
    out_dir = os.path.join(root + "_sem_seg", f"{split}-{_file_sha1(json_file)}")
    if not os.path.isfile(os.path.join(out_dir, "DONE")):
        os.makedirs(os.path.dirname(out_dir), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{split}-", dir=os.path.dirname(out_dir))
        for r in records:
            label = instances_to_label(r.get("annotations", []), r["height"], r["width"])
            Image.fromarray(label).save(os.path.join(tmp, f"{r['image_id']}.png"))
        open(os.path.join(tmp, "DONE"), "w").close()
        try:
            os.rename(tmp, out_dir)
        except OSError:  # another process won the race: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
    out = []
    for r in records:
        out.append({
            "file_name": r["file_name"],
            "height": r["height"],
            "width": r["width"],
            "image_id": r["image_id"],
            "sem_seg_file_name": os.path.join(out_dir, f"{r['image_id']}.png"),
        })
    return out


def register_demo_sem_seg() -> List[str]:
    """Register :data:`DEMO_SEM_SEG_NAMES` (nothing is generated now)."""
    for name, instances in zip(DEMO_SEM_SEG_NAMES, DEMO_DATASET_NAMES):
        DatasetCatalog.register(name, lambda n=instances: load_demo_sem_seg(n))
        MetadataCatalog.get(name).set(
            stuff_classes=list(DEMO_SEM_SEG_CLASSES),
            ignore_label=255,
            evaluator_type="sem_seg",
            ssprl_demo_args=MetadataCatalog.get(instances).get("ssprl_demo_args"),
        )
    return list(DEMO_SEM_SEG_NAMES)


if DEMO_SEM_SEG_NAMES[0] not in DatasetCatalog.list():  # tolerate a module reload
    register_demo_sem_seg()
