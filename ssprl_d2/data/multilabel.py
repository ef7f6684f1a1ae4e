"""Multi-label classification data: image-level targets, VOC 2007 classification sets, label
subsets for semi-supervised fine-tuning, the mapper (RandomResizedCrop / center-crop pipelines of
the SwAV / SS-PRL evaluations) and the train / test loaders.

Any detection-style dataset works: an image's targets are the set of ``category_id`` of its
``annotations`` (contiguous ids, as Detectron2's COCO loader produces). An annotation with
``"difficult": 1`` only marks its class "ignore" unless a non-difficult object of that class is
also present (the VOC protocol).
"""
import json
import logging
import os
import sys
import tempfile
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data import transforms as T
from detectron2.data.samplers import TrainingSampler
from detectron2.utils import comm
from PIL import Image

from .classification_meta import check_num_classes
from .crop_geometry import sample_resized_crop_box
from .image_io import read_image_or_none

logger = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip


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


# ------------------------------------------------------------------------ VOC 2007 cls
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


# ------------------------------------------------------------------------ label subsets
def _norm_id(image_id) -> str:
    s = str(image_id).strip()
    return str(int(s)) if s.isdigit() else s


def _id_sort_key(image_id):
    s = _norm_id(image_id)
    return (0, int(s), "") if s.isdigit() else (1, 0, s)


def sample_label_subset(image_ids: Sequence, fraction: float, seed: int = 0) -> List:
    """Deterministic subset: the ids sorted (numerically when they are numbers), then
    ``numpy.random.RandomState(seed).choice(N, round(fraction * N), replace=False)``.

    Returns:
        the chosen ids, sorted the same way.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"Label-subset fraction must be in (0, 1]: {fraction}")
    ids = sorted(set(image_ids), key=_id_sort_key)
    size = max(1, int(round(fraction * len(ids))))
    chosen = np.random.RandomState(seed).choice(len(ids), size=size, replace=False)
    return sorted((ids[i] for i in chosen), key=_id_sort_key)


def load_label_subset(path: str) -> List:
    """Image ids from a json list or a text file with one id per line ('#' starts a comment)."""
    with open(path) as f:
        text = f.read()
    if text.lstrip().startswith("["):
        return list(json.loads(text))
    return [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]


def write_label_subset(path: str, image_ids: Sequence) -> None:
    """Write one id per line, atomically (concurrent writers of the same subset are harmless)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".subset-")
    with os.fdopen(fd, "w") as f:
        f.writelines(f"{i}\n" for i in image_ids)
    os.replace(tmp, path)


def filter_by_label_subset(
    dataset_dicts: List[Dict], image_ids: Sequence, source: str = ""
) -> List[Dict]:
    """Keep the dicts whose "image_id" is in ``image_ids`` (compared as normalised strings)."""
    wanted = {_norm_id(i) for i in image_ids}
    kept = [d for d in dataset_dicts if _norm_id(d["image_id"]) in wanted]
    if not kept:
        raise ValueError(f"No training image is in the label subset {source}.")
    missing = len(wanted) - len({_norm_id(d["image_id"]) for d in kept})
    if missing:
        logger.warning(f"{missing} ids of the label subset {source} are not in the training set.")
    return kept


def resolve_subset_path(path: str) -> str:
    """Absolute path of a label-subset file: as given, else relative to the working directory if
    it exists there, else relative to the project root (where configs/ lives)."""
    if os.path.isabs(path) or os.path.exists(path):
        return os.path.abspath(path)
    project_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    candidate = os.path.join(project_root, path)
    first = path.replace("\\", "/").split("/")[0]
    if os.path.exists(candidate) or os.path.isdir(os.path.join(project_root, first)):
        return candidate
    return os.path.abspath(path)


def apply_label_subset(
    dataset_dicts: List[Dict], path: str, fraction: float = 0.0, seed: int = 0
) -> List[Dict]:
    """Filter ``dataset_dicts`` by the subset file ``path``, creating it first (see
    :func:`sample_label_subset`) when it is missing and ``fraction`` > 0."""
    path = resolve_subset_path(path)
    if not os.path.exists(path):
        if fraction <= 0:
            raise FileNotFoundError(
                f"Label subset {path} does not exist; create it with tools/make_label_subset.py "
                "or set DATASETS.CLASSIFICATION.LABEL_SUBSET_FRACTION to draw it on first use."
            )
        ids = sample_label_subset([d["image_id"] for d in dataset_dicts], fraction, seed)
        write_label_subset(path, ids)
        logger.info(
            f"Label subset {path} was missing: drew {len(ids)} of {len(dataset_dicts)} image ids "
            f"(fraction {fraction}, seed {seed}) and saved it; later runs reuse this file."
        )
    kept = filter_by_label_subset(dataset_dicts, load_label_subset(path), path)
    logger.info(f"Label subset {path}: training on {len(kept)} of {len(dataset_dicts)} images.")
    return kept


# --------------------------------------------------------------------------- dataset dicts
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


# ---------------------------------------------------------------------------- transforms
class RandomResizedCrop(T.Augmentation):
    """Crop a random area fraction in ``scale`` and aspect ratio in ``ratio`` (log-uniform),
    resized to ``size`` x ``size``; after 10 failed draws, the central crop of the clamped ratio
    (the torchvision definition: :func:`ssprl_d2.data.crop_geometry.sample_resized_crop_box`,
    the pre-training mapper's rule).

    Randomness: each call draws one seed from numpy's global RNG and samples the box from a
    ``torch.Generator`` seeded with it. numpy's global RNG is the stream of Detectron2's own
    augmentations (e.g. ``RandomFlip``), seeded per process and per data-loader worker by
    ``seed_all_rng``; so the whole classification pipeline stays reproducible from that one
    seed, and independent of torch's global RNG (model initialisation, samplers).
    """

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0), interp=None):
        super().__init__()
        interp = Image.BILINEAR if interp is None else interp
        self._init(locals())

    def get_transform(self, image):
        h, w = image.shape[:2]
        generator = torch.Generator().manual_seed(int(np.random.randint(2**31, dtype=np.int64)))
        ratio = (min(self.ratio), max(self.ratio))  # the fallback clamps to the sorted range
        top, left, ch, cw = sample_resized_crop_box(h, w, self.scale, ratio, generator)
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


register_all_voc_cls()
