"""The generated demo dataset: registration, determinism, COCO validity, caching."""
import hashlib
import json
import multiprocessing
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image
from pycocotools.coco import COCO

import ssprl_d2  # noqa: F401  (registers the demo splits)
from ssprl_d2.data.datasets import prepare_datasets, register_demo_datasets
from ssprl_d2.data.demo import (
    DEMO_CATEGORIES,
    DEMO_NUM_TRAIN,
    DEMO_NUM_VAL,
    ensure_demo_dataset,
    generate_demo_dataset,
)
from ssprl_d2.data.demo_render import CATEGORY_SPECS as _CATEGORY_SPECS

SMALL = dict(num_train=12, num_val=6)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    return generate_demo_dataset(str(tmp_path_factory.mktemp("demo_small")), **SMALL)


def _tree_hashes(root):
    hashes = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                hashes[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return hashes


def _check_coco(json_file, image_root, num_images):
    coco = COCO(json_file)
    assert len(coco.imgs) == num_images
    assert [c["name"] for c in coco.dataset["categories"]] == DEMO_CATEGORIES
    for image_id, info in coco.imgs.items():
        assert 160 <= info["height"] <= 256 and 160 <= info["width"] <= 256
        with Image.open(os.path.join(image_root, info["file_name"])) as im:
            assert im.size == (info["width"], info["height"])
        anns = coco.imgToAnns[image_id]
        assert 1 <= len(anns) <= 4
        covered = np.zeros((info["height"], info["width"]), dtype=np.int32)
        for ann in anns:
            assert ann["iscrowd"] == 0
            assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"])
            mask = coco.annToMask(ann)
            assert mask.sum() == ann["area"] >= 64
            ys, xs = np.nonzero(mask)
            x, y, w, h = ann["bbox"]
            assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert x >= 0 and y >= 0 and x + w <= info["width"] and y + h <= info["height"]
            covered += mask
        assert covered.max() == 1, "instance masks of one image must not overlap"
    return coco


def test_import_registers_demo_names():
    for split in ("train", "val"):
        name = f"ssprl_demo_{split}"
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == DEMO_CATEGORIES and len(DEMO_CATEGORIES) >= 8
        assert meta.evaluator_type == "coco"
        assert meta.json_file.endswith(f"instances_{split}.json")
        assert meta.image_root.endswith(os.path.join("images", split))


def test_generation_is_deterministic(small_root, tmp_path):
    again = generate_demo_dataset(str(tmp_path / "again"), **SMALL)
    first, second = _tree_hashes(small_root), _tree_hashes(again)
    assert len(first) == 12 + 6 + 3
    assert first == second
    other_seed = generate_demo_dataset(str(tmp_path / "seed1"), seed=1, **SMALL)
    assert _tree_hashes(other_seed) != first


def test_small_dataset_is_valid_coco(small_root):
    for split, n in (("train", 12), ("val", 6)):
        _check_coco(
            os.path.join(small_root, "annotations", f"instances_{split}.json"),
            os.path.join(small_root, "images", split),
            n,
        )


def test_mask_pixels_carry_the_category_colour(small_root):
    """The pixels under a mask are the object's: their mean colour is nearest its category's."""
    coco = COCO(os.path.join(small_root, "annotations", "instances_train.json"))
    bases = np.array([spec[2] for spec in _CATEGORY_SPECS], dtype=np.float64)
    bases /= np.linalg.norm(bases, axis=1, keepdims=True)
    hits = total = 0
    for image_id, info in coco.imgs.items():
        path = os.path.join(small_root, "images", "train", info["file_name"])
        pixels = np.asarray(Image.open(path))
        for ann in coco.imgToAnns[image_id]:
            mean = pixels[coco.annToMask(ann).astype(bool)].mean(axis=0)
            guess = int(np.argmax(bases @ (mean / np.linalg.norm(mean))))
            hits += guess == ann["category_id"] - 1
            total += 1
    assert hits / total > 0.9


def test_registration_is_lazy(tmp_path):
    root = tmp_path / "lazy"
    names = register_demo_datasets(str(root), prefix="test_lazy_demo", num_train=4, num_val=2)
    assert not root.exists()
    dicts = DatasetCatalog.get(names[1])
    assert root.exists() and len(dicts) == 2
    assert dicts[0]["annotations"][0]["category_id"] in range(len(DEMO_CATEGORIES))
    assert os.path.isfile(MetadataCatalog.get(names[0]).json_file)
    prepare_datasets(names)  # already there: a no-op


def test_cache_is_regenerated_when_arguments_change(tmp_path):
    root = str(tmp_path / "cache")
    ensure_demo_dataset(root, num_train=3, num_val=1)
    ensure_demo_dataset(root, num_train=5, num_val=1)
    assert len(os.listdir(os.path.join(root, "images", "train"))) == 5
    with open(os.path.join(root, "annotations", "instances_train.json")) as f:
        assert len(json.load(f)["images"]) == 5
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith(".")]
    assert leftovers == []


def _ensure(root, queue):
    queue.put(ensure_demo_dataset(root, num_train=6, num_val=2))


def test_concurrent_generation_is_safe(tmp_path):
    root = str(tmp_path / "race")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ensure, args=(root, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert [queue.get(timeout=5) for _ in procs] == [root, root]
    assert sorted(n for n in os.listdir(tmp_path) if not n.endswith(".lock")) == ["race"]
    _check_coco(
        os.path.join(root, "annotations", "instances_train.json"),
        os.path.join(root, "images", "train"),
        6,
    )


def test_default_dataset(demo_root):
    """The full default dataset (cached): sizes, categories of both splits, Detectron2 loading."""
    for split, n in (("train", DEMO_NUM_TRAIN), ("val", DEMO_NUM_VAL)):
        coco = _check_coco(
            os.path.join(demo_root, "annotations", f"instances_{split}.json"),
            os.path.join(demo_root, "images", split),
            n,
        )
        counts = np.bincount([a["category_id"] - 1 for a in coco.dataset["annotations"]])
        assert len(counts) == len(DEMO_CATEGORIES) and counts.min() >= 0.6 * counts.max()
    dicts = DatasetCatalog.get("ssprl_demo_val")
    assert len(dicts) == DEMO_NUM_VAL
    assert all(1 <= len(d["annotations"]) <= 4 for d in dicts)


def test_backgrounds_are_stationary(small_root):
    """Every background is a draw of one distribution: the mean colour and the contrast of the
    pixels outside the masks vary little between images (v1's photos differed by 60-100 grey
    levels), so the background says nothing about which image a crop comes from."""
    coco = COCO(os.path.join(small_root, "annotations", "instances_train.json"))
    means, stds = [], []
    for image_id, info in coco.imgs.items():
        pixels = np.asarray(Image.open(
            os.path.join(small_root, "images", "train", info["file_name"]))).astype(np.float64)
        objects = np.zeros(pixels.shape[:2], dtype=bool)
        for ann in coco.imgToAnns[image_id]:
            objects |= coco.annToMask(ann).astype(bool)
        background = pixels[~objects]  # (N, 3)
        means.append(background.mean(axis=0))
        stds.append(background.std(axis=0).mean())
    means, stds = np.array(means), np.array(stds)
    assert np.abs(means - means.mean(axis=0)).max() < 15  # grey levels, per channel
    assert means.std(axis=0).max() < 6
    assert stds.max() - stds.min() < 10
