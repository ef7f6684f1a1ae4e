"""A user's own COCO json trains as it is: the instance-mask format is chosen from the training
annotations (RLE -> bitmask), an explicit INPUT.MASK_FORMAT wins and an impossible one fails at
start-up naming the key; multi-label targets keep every category of an image's annotations."""
import json
import logging
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from PIL import Image

import ssprl_d2  # noqa: F401
from ssprl_d2.config import add_ssprl_config
from ssprl_d2.data.mask_format import count_mask_kinds, resolve_mask_format
from ssprl_d2.data.multilabel import get_multilabel_test_dicts
from ssprl_d2.engine import build_trainer
from ssprl_d2.engine.setup import load_config

from detection_utils import tiny_detection_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLY = {"segmentation": [[2.0, 2.0, 20.0, 2.0, 20.0, 20.0, 2.0, 20.0]]}
RLE = {"segmentation": {"size": [32, 32], "counts": [40, 10, 974]}}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_resolve_mask_format():
    polys = [{"annotations": [POLY, POLY]}]
    mixed = polys + [{"annotations": [RLE]}]
    assert count_mask_kinds(mixed) == {"polygon": 2, "rle": 1}
    assert resolve_mask_format(polys, "auto") == "polygon"
    assert resolve_mask_format(mixed, "auto") == "bitmask"
    assert resolve_mask_format(polys, "bitmask") == "bitmask"  # explicit wins
    with pytest.raises(ValueError, match="INPUT.MASK_FORMAT"):
        resolve_mask_format(mixed, "polygon")


def test_unknown_mask_format_fails_in_load_config():
    with pytest.raises(ValueError, match="INPUT.MASK_FORMAT"):
        load_config(
            os.path.join(REPO, "configs/detection/mask_rcnn_demo.yaml"),
            ["INPUT.MASK_FORMAT", "rle", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()"],
        )


def _rle_coco(tmp_path):
    """Two 64x64 images: RLE masks (uncompressed counts, as panoptic conversions write them)
    in one, a polygon in the other."""
    img_dir = tmp_path / "img"
    img_dir.mkdir()
    images, anns = [], []
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
            img_dir / f"{i}.jpg"
        )
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "height": 64, "width": 64})
    mask = np.zeros((64, 64), np.uint8)
    mask[10:40, 8:30] = 1
    counts = mask_util.encode(np.asfortranarray(mask))
    area = float(mask_util.area(counts))
    flat = mask.flatten(order="F")
    runs, value, run = [], 0, 0
    for v in flat:
        if v != value:
            runs.append(run)
            value, run = v, 0
        run += 1
    runs.append(run)
    anns.append({"id": 1, "image_id": 1, "category_id": 1, "bbox": [8, 10, 22, 30],
                 "area": area, "iscrowd": 0, "segmentation": {"size": [64, 64], "counts": runs}})
    anns.append({"id": 2, "image_id": 2, "category_id": 2, "bbox": [4, 4, 20, 20], "area": 400.0,
                 "iscrowd": 0, "segmentation": [[4, 4, 24, 4, 24, 24, 4, 24]]})
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    return str(path), str(img_dir)


def _detection_cfg(tmp_path, name, extra=()):
    json_file, root = _rle_coco(tmp_path)
    return tiny_detection_cfg(json_file, root, name, tmp_path / "out", num_classes=2, max_iter=1,
                              extra=extra)


def test_rle_coco_json_trains_mask_rcnn(tmp_path, caplog):
    cfg = _detection_cfg(tmp_path, "test_mask_format_rle")
    project_logger = logging.getLogger("ssprl_d2")  # set up not to propagate to the root
    project_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="ssprl_d2.data.mask_format"):
            trainer = build_trainer(cfg)
    finally:
        project_logger.removeHandler(caplog.handler)
    assert "-> INPUT.MASK_FORMAT bitmask" in caplog.text
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert np.isfinite(trainer.storage.history("loss_mask").latest())


def test_explicit_polygon_with_rle_fails_when_the_trainer_is_built(tmp_path):
    cfg = _detection_cfg(tmp_path, "test_mask_format_rle_poly", ["INPUT.MASK_FORMAT", "polygon"])
    with pytest.raises(ValueError, match="INPUT.MASK_FORMAT is 'polygon'"):
        build_trainer(cfg)


def test_multilabel_targets_keep_dropped_and_crowd_annotations(shared_data_dir, tmp_path):
    """On the real COCO sample plus an invalid-polygon and a crowd annotation of new classes,
    targets equal pycocotools' categories per image (Detectron2's loader drops the former)."""
    from pycocotools.coco import COCO

    with open(os.path.join(shared_data_dir, "instances_train2017.json")) as f:
        coco = json.load(f)
    img = coco["images"][0]
    present = {a["category_id"] for a in coco["annotations"] if a["image_id"] == img["id"]}
    new = [c["id"] for c in coco["categories"] if c["id"] not in present][:2]
    next_id = max(a["id"] for a in coco["annotations"]) + 1
    coco["annotations"] += [
        {"id": next_id, "image_id": img["id"], "category_id": new[0], "bbox": [0, 0, 2, 2],
         "area": 4.0, "iscrowd": 0, "segmentation": [[0.0, 0.0, 2.0, 2.0]]},  # invalid polygon
        {"id": next_id + 1, "image_id": img["id"], "category_id": new[1], "bbox": [0, 0, 4, 4],
         "area": 16.0, "iscrowd": 1,
         "segmentation": {"size": [img["height"], img["width"]],
                          "counts": [0, 16, img["height"] * img["width"] - 16]}},
    ]  # fmt: skip
    json_file = str(tmp_path / "instances.json")
    with open(json_file, "w") as f:
        json.dump(coco, f)
    name = "test_multilabel_coco128_hostile"
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, json_file, os.path.join(shared_data_dir, "images"))
    cfg = get_cfg()
    add_ssprl_config(cfg)
    dicts = get_multilabel_test_dicts(cfg, name)
    ref = COCO(json_file)
    cat_ids = sorted(ref.getCatIds())
    for d in dicts:
        expected = np.zeros(80, np.float32)
        anns = ref.loadAnns(ref.getAnnIds(imgIds=[d["image_id"]], iscrowd=None))
        expected[[cat_ids.index(a["category_id"]) for a in anns]] = 1
        np.testing.assert_array_equal(d["labels"], expected, err_msg=str(d["image_id"]))
    first = next(d for d in dicts if d["image_id"] == img["id"])
    assert all(first["labels"][cat_ids.index(c)] == 1 for c in new)
