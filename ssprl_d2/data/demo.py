"""The bundled demo dataset: SYNTHETIC multi-object scenes in COCO format, generated on first use.

Nothing is downloaded and nothing but this generator is committed. Each image shows 1-4 textured
shapes on a procedural background (drawn by :mod:`.demo_render`); every category has its own
shape, colour and texture, so both shape and colour carry the class. This module holds the
dataset's lifecycle: its root and cache, the lock-and-rename generation, and the JPEG / COCO json
writing.

Version 2 of the design: every background is a fresh draw from ONE stationary distribution, so
two crops of an image share nothing but their objects. Version 1 cut backgrounds from 12 photos;
self-supervised training then clustered the photos (image identity) instead of the objects.
Annotations are COCO instances (box, polygon mask of the visible part, area, ``iscrowd=0``);
the image-level multi-labels are the set of categories of an image's instances.

Generation is deterministic (fixed seeds, fixed JPEG quality): the same arguments give
byte-identical images and json files with the same library versions.
"""
import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Dict, Iterator, List, Optional

import numpy as np
from PIL import Image

from .demo_render import CATEGORY_SPECS, plan_split, render_image

__all__ = [
    "DEMO_CATEGORIES",
    "DEMO_NUM_TRAIN",
    "DEMO_NUM_VAL",
    "DEMO_SPLITS",
    "default_demo_root",
    "ensure_demo_dataset",
    "generate_demo_dataset",
    "get_demo_root",
]

logger = logging.getLogger(__name__)

# Bump when the generator's output changes: cached copies of another version are regenerated.
GENERATOR_VERSION = 2

DEMO_SPLITS = ("train", "val")
# Default split sizes: 240 val images keep the probes' evaluation noise low.
DEMO_NUM_TRAIN = 480
DEMO_NUM_VAL = 240
# The category names; CATEGORY_SPECS (demo_render) holds their shape, colour and texture, and
# the index + 1 is the COCO category id.
DEMO_CATEGORIES: List[str] = [spec[0] for spec in CATEGORY_SPECS]
_JPEG_QUALITY = 90
_INFO_FILE = "demo_info.json"


def default_demo_root() -> str:
    """``$SSPRL_CACHE_DIR/demo`` if the variable is set, else ``~/.cache/ssprl_d2/demo``."""
    cache = os.environ.get("SSPRL_CACHE_DIR") or os.path.join("~", ".cache", "ssprl_d2")
    return os.path.join(os.path.abspath(os.path.expanduser(cache)), "demo")


def get_demo_root() -> str:
    """Root of the default demo dataset (DEMO_NUM_TRAIN / DEMO_NUM_VAL images), made on first use.

    Returns:
        the folder holding ``images/{train,val}/`` and ``annotations/instances_{train,val}.json``.
    """
    return ensure_demo_dataset(default_demo_root())


def ensure_demo_dataset(
    root: Optional[str] = None,
    num_train: int = DEMO_NUM_TRAIN,
    num_val: int = DEMO_NUM_VAL,
    seed: int = 0,
) -> str:
    """Return ``root`` after making sure it holds the demo dataset of these arguments.

    A missing (or stale: other arguments or generator version) dataset is generated into a
    temporary folder next to ``root`` and renamed into place, under a file lock where the platform
    has one; a process that loses the race keeps the winner's copy. Readers therefore never see a
    half-written dataset.
    """
    root = os.path.abspath(os.path.expanduser(root or default_demo_root()))
    params = _params(num_train, num_val, seed)
    if _is_complete(root, params):
        return root
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    with _file_lock(root + ".lock"):
        if _is_complete(root, params):  # another process finished while we waited
            return root
        start = time.perf_counter()
        tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(root) + "-", dir=parent)
        try:
            generate_demo_dataset(tmp, num_train=num_train, num_val=num_val, seed=seed)
            if os.path.exists(root):
                logger.info(f"Replacing the stale demo dataset at {root}")
                stale = tempfile.mkdtemp(prefix=".stale-", dir=parent)
                os.rename(root, os.path.join(stale, "old"))
                shutil.rmtree(stale, ignore_errors=True)
            try:
                os.rename(tmp, root)
            except OSError:
                if not _is_complete(root, params):
                    raise
                # Another process (on a platform without file locks) renamed first: keep its copy.
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info(
            f"Generated the SYNTHETIC demo dataset ({num_train} train / {num_val} val images) at "
            f"{root} in {time.perf_counter() - start:.1f} s"
        )
    return root


def generate_demo_dataset(
    root: str, num_train: int = DEMO_NUM_TRAIN, num_val: int = DEMO_NUM_VAL, seed: int = 0
) -> str:
    """Write the demo dataset into ``root`` (no atomicity; see :func:`ensure_demo_dataset`).

    Args:
        root: output folder; gets ``images/{train,val}/*.jpg``,
            ``annotations/instances_{train,val}.json`` and a ``demo_info.json`` marker (last).
        num_train, num_val: number of images of each split.
        seed: base seed; each image has its own stream derived from (seed, split, index).

    Returns:
        ``root``.
    """
    for split_id, (split, num_images) in enumerate(zip(DEMO_SPLITS, (num_train, num_val))):
        image_dir = os.path.join(root, "images", split)
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
        images, annotations = [], []
        plan = plan_split(num_images, seed, split_id)
        for index, categories in enumerate(plan):
            rng = np.random.default_rng([seed, split_id, index, 1])
            pixels, objects = render_image(rng, categories)
            image_id = index + 1
            file_name = f"{image_id:06d}.jpg"
            Image.fromarray(pixels).save(
                os.path.join(image_dir, file_name), format="JPEG", quality=_JPEG_QUALITY
            )
            height, width = pixels.shape[:2]
            images.append(
                {"id": image_id, "file_name": file_name, "height": height, "width": width}
            )
            for category, polygons, mask in objects:
                ann_id = len(annotations) + 1
                annotations.append(_annotation(ann_id, image_id, category, polygons, mask))
        coco = {
            "info": {
                "description": "ssprl_d2 demo dataset: SYNTHETIC shapes on procedural noise "
                "backgrounds, generated by ssprl_d2/data/demo.py",
                "version": str(GENERATOR_VERSION),
                "split": split,
                "seed": seed,
            },
            "licenses": [],
            "categories": [
                {"id": i + 1, "name": name, "supercategory": "shape"}
                for i, name in enumerate(DEMO_CATEGORIES)
            ],
            "images": images,
            "annotations": annotations,
        }
        with open(os.path.join(root, "annotations", f"instances_{split}.json"), "w") as f:
            json.dump(coco, f)
    with open(os.path.join(root, _INFO_FILE), "w") as f:
        json.dump(_params(num_train, num_val, seed), f, sort_keys=True)
    return root


def _params(num_train: int, num_val: int, seed: int) -> Dict[str, int]:
    return {"version": GENERATOR_VERSION, "num_train": num_train, "num_val": num_val, "seed": seed}


def _is_complete(root: str, params: Dict[str, int]) -> bool:
    try:
        with open(os.path.join(root, _INFO_FILE)) as f:
            return json.load(f) == params
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    try:
        import fcntl  # optional: POSIX only (Windows has none)
    except ImportError:  # no fcntl (Windows): rely on rename-if-absent alone
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _annotation(ann_id: int, image_id: int, category: int, polygons, mask: np.ndarray) -> Dict:
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    bbox = [float(x0), float(y0), float(xs.max() - x0 + 1), float(ys.max() - y0 + 1)]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category + 1,
        "segmentation": polygons,
        "area": float(mask.sum()),
        "bbox": bbox,
        "iscrowd": 0,
    }
