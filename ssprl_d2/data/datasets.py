"""Dataset registration: the demo splits, image folders, COCO jsons, and up-front path checks.

Importing this module registers ``ssprl_demo_train`` and ``ssprl_demo_val`` (the SYNTHETIC demo
dataset of :mod:`ssprl_d2.data.demo`). Nothing is generated at import: the files are generated the
first time a demo split is loaded through ``DatasetCatalog.get`` (or by
:func:`prepare_datasets`). Detectron2's built-in names (``coco_2014_train``, ``coco_2014_val``,
``voc_2007_trainval``, ``voc_2007_test``, ...) resolve under ``$DETECTRON2_DATASETS`` (default
``./datasets``), read by Detectron2 when it is imported.
"""
import logging
import os
from typing import Dict, Iterable, List, Optional, Sequence

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ssprl_d2.config import TASK_CLASSIFY, task_of

from .demo import (
    DEMO_CATEGORIES,
    DEMO_NUM_TRAIN,
    DEMO_NUM_VAL,
    DEMO_SPLITS,
    default_demo_root,
    ensure_demo_dataset,
)
from .multilabel import get_multilabel_train_dicts

__all__ = [
    "train_set_size",
    "DEMO_DATASET_NAMES",
    "IMAGE_EXTENSIONS",
    "check_datasets_exist",
    "list_image_files",
    "prepare_datasets",
    "register_coco_json",
    "register_demo_datasets",
    "register_from_config",
    "register_image_folder",
]

logger = logging.getLogger(__name__)

DEMO_DATASET_NAMES = tuple(f"ssprl_demo_{split}" for split in DEMO_SPLITS)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

# Metadata keys that name files or folders a dataset needs (Detectron2's built-ins use these).
_PATH_KEYS = (
    "json_file",
    "image_root",
    "dirname",
    "image_dir",
    "gt_dir",
    "sem_seg_root",
    "panoptic_root",
    "panoptic_json",
    "split_file",
)
_HINT = (
    "Detectron2's built-in datasets are looked up under $DETECTRON2_DATASETS (now {root!r}; it "
    "is read when detectron2 is imported), e.g. $DETECTRON2_DATASETS/coco/train2014, "
    "$DETECTRON2_DATASETS/coco/annotations/instances_train2014.json, "
    "$DETECTRON2_DATASETS/VOC2007/JPEGImages: set DETECTRON2_DATASETS to the folder that holds "
    "coco/ and VOC2007/, or register your own copy with DATASETS.SSPRL.COCO_JSONS or "
    "DATASETS.SSPRL.IMAGE_FOLDERS."
)


# ---------------------------------------------------------------------------------------------
# Demo dataset
# ---------------------------------------------------------------------------------------------
def register_demo_datasets(
    root: Optional[str] = None,
    prefix: str = "ssprl_demo",
    num_train: int = DEMO_NUM_TRAIN,
    num_val: int = DEMO_NUM_VAL,
    seed: int = 0,
) -> List[str]:
    """Register the demo splits as ``{prefix}_train`` / ``{prefix}_val`` without generating them.

    Args:
        root: where the dataset lives or will be generated; default
            :func:`ssprl_d2.data.demo.default_demo_root` (read once, now).
        prefix: name prefix.
        num_train, num_val, seed: see :func:`ssprl_d2.data.demo.generate_demo_dataset`.

    Returns:
        the registered names.
    """
    root = os.path.abspath(os.path.expanduser(root or default_demo_root()))
    args = {"root": root, "num_train": num_train, "num_val": num_val, "seed": seed}
    names = []
    for split in DEMO_SPLITS:
        name = f"{prefix}_{split}"
        json_file = os.path.join(root, "annotations", f"instances_{split}.json")
        image_root = os.path.join(root, "images", split)

        def load(name=name, json_file=json_file, image_root=image_root):
            ensure_demo_dataset(**args)
            return load_coco_json(json_file, image_root, name)

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(
            thing_classes=list(DEMO_CATEGORIES),
            json_file=json_file,
            image_root=image_root,
            evaluator_type="coco",
            ssprl_demo_args=args,
        )
        names.append(name)
    return names


def prepare_datasets(names: Iterable[str]) -> None:
    """Create the files of generated datasets (the demo) among ``names``; others are untouched.

    Call it before anything reads a dataset's files without going through ``DatasetCatalog.get``
    (e.g. ``COCOEvaluator`` opens ``MetadataCatalog.get(name).json_file``).
    """
    for name in names:
        args = MetadataCatalog.get(name).get("ssprl_demo_args")
        if args:
            ensure_demo_dataset(**args)


# ---------------------------------------------------------------------------------------------
# Image folders and COCO jsons
# ---------------------------------------------------------------------------------------------
def list_image_files(folder: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> List[str]:
    """Sorted paths of the images under ``folder`` (recursively: flat or ImageNet-style tree).

    Raises:
        FileNotFoundError: when the folder is missing or holds no image with these extensions.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Image folder {folder!r} does not exist (or is not a folder).")
    extensions = tuple(e.lower() for e in extensions)
    files = []
    for directory, subdirs, names in os.walk(folder, followlinks=True):
        subdirs.sort()
        files.extend(
            os.path.join(directory, n) for n in sorted(names) if n.lower().endswith(extensions)
        )
    if not files:
        raise FileNotFoundError(
            f"Image folder {folder!r} holds no image file with an extension in {extensions}."
        )
    return files


def register_image_folder(
    name: str, folder: str, extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> None:
    """Register the images under ``folder`` as a label-free dataset (for pre-training).

    The folder may be flat or an ImageNet-style tree (``folder/<class>/<image>``). Records hold
    ``file_name`` and ``image_id`` (the index in sorted path order), no ``height``/``width`` and no
    annotations. The folder is listed when the dataset is loaded, not now.
    """
    folder = os.path.expanduser(folder)
    extensions = tuple(extensions)

    def load() -> List[Dict]:
        files = list_image_files(folder, extensions)
        logger.info(f"Found {len(files)} images under {folder} for dataset {name!r}")
        return [{"file_name": f, "image_id": i} for i, f in enumerate(files)]

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(image_root=folder)


def register_coco_json(name: str, json_file: str, image_root: str) -> None:
    """Register any COCO-format instances json (like ``register_coco_instances``).

    Loading raises a ``FileNotFoundError`` that names the missing path instead of a bare
    ``open`` error.
    """
    json_file = os.path.expanduser(json_file)
    image_root = os.path.expanduser(image_root)

    def load() -> List[Dict]:
        for key, path in (("json_file", json_file), ("image_root", image_root)):
            if not os.path.exists(path):
                raise FileNotFoundError(f"Dataset {name!r}: {key} {path!r} does not exist.")
        return load_coco_json(json_file, image_root, name)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco")


# ---------------------------------------------------------------------------------------------
# Checks and config
# ---------------------------------------------------------------------------------------------
def check_datasets_exist(names: Iterable[str]) -> None:
    """Make sure every dataset of ``names`` is registered and its files are where it expects.

    Paths come from the metadata (``json_file``, ``image_root``, ``dirname`` ...; for VOC also
    ``Annotations``, ``JPEGImages`` and ``ImageSets/Main/<split>.txt``). Demo datasets pass
    without being generated.

    Raises:
        KeyError: a name that is not registered.
        FileNotFoundError: listing every missing path, with how to point Detectron2 at the data.
    """
    missing = []
    for name in names:
        if name not in DatasetCatalog.list():
            raise KeyError(
                f"Dataset {name!r} is not registered. Use one of Detectron2's built-in names, "
                f"{', '.join(DEMO_DATASET_NAMES)}, or register it with DATASETS.SSPRL.COCO_JSONS "
                "or DATASETS.SSPRL.IMAGE_FOLDERS."
            )
        meta = MetadataCatalog.get(name)
        if meta.get("ssprl_demo_args"):
            continue
        for key, path in _expected_paths(meta):
            if not os.path.exists(path):
                missing.append(f"  {name}: {key} {path!r}")
    if missing:
        root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
        raise FileNotFoundError(
            "Dataset files not found:\n" + "\n".join(missing) + "\n" + _HINT.format(root=root)
        )


def _expected_paths(meta) -> List[tuple]:
    paths = [
        (key, os.fspath(meta.get(key)))
        for key in _PATH_KEYS
        if isinstance(meta.get(key), (str, os.PathLike))
    ]
    if meta.get("dirname") and meta.get("split") and meta.get("evaluator_type") == "pascal_voc":
        split_file = os.path.join(meta.dirname, "ImageSets", "Main", meta.split + ".txt")
        paths += [
            ("Annotations", os.path.join(meta.dirname, "Annotations")),
            ("JPEGImages", os.path.join(meta.dirname, "JPEGImages")),
            ("split file", split_file),
        ]
    return paths


def _register_once(name: str, expected: Dict[str, str], register) -> None:
    """Register unless ``name`` already is with the same paths; other paths are an error."""
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        found = {key: meta.get(key) for key in expected}
        if found != expected:
            raise ValueError(
                f"Dataset {name!r} is already registered with {found}, not {expected}; "
                "pick another name."
            )
        return
    register()


def register_from_config(cfg: CfgNode) -> None:
    """Register DATASETS.SSPRL.IMAGE_FOLDERS / COCO_JSONS, then check DATASETS.TRAIN and TEST.

    Idempotent: names already registered with the same paths are skipped.

    Raises:
        ValueError: a malformed entry, or a name registered before with other paths.
        KeyError, FileNotFoundError: see :func:`check_datasets_exist`.
    """
    for entry in cfg.DATASETS.SSPRL.IMAGE_FOLDERS:
        if len(entry) != 2:
            raise ValueError(
                f"DATASETS.SSPRL.IMAGE_FOLDERS entries are [name, folder], got {list(entry)}"
            )
        name, folder = (str(v) for v in entry)
        expected = {"image_root": os.path.expanduser(folder)}
        _register_once(name, expected, lambda: register_image_folder(name, folder))
    for entry in cfg.DATASETS.SSPRL.COCO_JSONS:
        if len(entry) != 3:
            raise ValueError(
                f"DATASETS.SSPRL.COCO_JSONS entries are [name, json, image_root], got {list(entry)}"
            )
        name, json_file, image_root = (str(v) for v in entry)
        expected = {
            "json_file": os.path.expanduser(json_file),
            "image_root": os.path.expanduser(image_root),
        }
        _register_once(name, expected, lambda: register_coco_json(name, json_file, image_root))
    check_datasets_exist(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))


if DEMO_DATASET_NAMES[0] not in DatasetCatalog.list():  # tolerate a module reload
    register_demo_datasets()


def train_set_size(cfg: CfgNode) -> int:
    """Number of training images of ``cfg.DATASETS.TRAIN`` (classification: after the label
    subset)."""
    if task_of(cfg) == TASK_CLASSIFY:
        return len(get_multilabel_train_dicts(cfg))
    return sum(len(DatasetCatalog.get(name)) for name in cfg.DATASETS.TRAIN)
