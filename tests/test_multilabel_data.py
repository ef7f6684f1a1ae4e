"""Multi-label targets (COCO json, VOC XML), label subsets, the mapper and the loaders."""
import json
import logging
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from PIL import Image

from ssprl_d2.config import add_ssprl_config
from ssprl_d2.data.classification_loader import (
    CenterCrop,
    MultiLabelDatasetMapper,
    RandomResizedCrop,
    build_multilabel_test_loader,
    build_multilabel_train_loader,
)
from ssprl_d2.data.label_subset import apply_label_subset, load_label_subset, sample_label_subset
from ssprl_d2.data.multilabel import get_multilabel_train_dicts, multilabel_targets
from ssprl_d2.data.voc_classification import VOC_CLASSES, load_voc_cls_dicts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("SSPRL_SHARED_DATA", os.path.join(ROOT, "..", "shared", "data"))


def _write_jpg(path, size=(40, 30), seed=0):
    rng = np.random.RandomState(seed)
    Image.fromarray(rng.randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _coco_fixture(tmp_path, name):
    """5 images; category ids 1, 3, 7 (non-contiguous); image 4 has no annotation."""
    (tmp_path / "img").mkdir()
    images, anns = [], []
    cats = {1: "cat", 3: "dog", 7: "bird"}
    per_image = {1: [1, 1, 3], 2: [7], 3: [3, 7, 1], 4: [], 5: [3]}
    for image_id, cat_ids in per_image.items():
        _write_jpg(tmp_path / "img" / f"{image_id}.jpg", seed=image_id)
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": 30, "width": 40})
        for c in cat_ids:
            crowd = int(image_id == 3 and c == 1)
            anns.append(
                {"id": len(anns) + 1, "image_id": image_id, "category_id": c,
                 "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": crowd}
            )  # fmt: skip
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": k, "name": v} for k, v in cats.items()]}
    json_file = tmp_path / "instances.json"
    json_file.write_text(json.dumps(coco))
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, str(json_file), str(tmp_path / "img"))
    return name


def _cfg(train, test=(), num_classes=3):
    cfg = get_cfg()
    add_ssprl_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs/classification/Base-Classification.yaml"))
    cfg.DATASETS.TRAIN = (train,)
    cfg.DATASETS.TEST = test
    cfg.MODEL.CLASSIFIER.NUM_CLASSES = num_classes
    cfg.INPUT.CLASSIFICATION.TRAIN_CROP_SIZE = 24
    cfg.INPUT.CLASSIFICATION.TEST_RESIZE = 28
    cfg.INPUT.CLASSIFICATION.TEST_CROP_SIZE = 24
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.TEST.IMS_PER_BATCH = 3
    return cfg


def test_targets_from_coco_json(tmp_path):
    name = _coco_fixture(tmp_path, "test_multilabel_data_coco")
    dicts = {d["image_id"]: d for d in DatasetCatalog.get(name)}
    expected = {1: [1, 1, 0], 2: [0, 0, 1], 3: [1, 1, 1], 4: [0, 0, 0], 5: [0, 1, 0]}
    for image_id, target in expected.items():
        np.testing.assert_array_equal(multilabel_targets(dicts[image_id], 3, -1), target)
    with pytest.raises(ValueError, match=r"2\.jpg: category ids \[2\]"):
        multilabel_targets(dicts[2], 2, -1)


def test_train_dicts_keep_unlabelled_images_and_warn(tmp_path, caplog):
    name = _coco_fixture(tmp_path, "test_multilabel_data_coco_train")
    dicts = get_multilabel_train_dicts(_cfg(name))
    assert len(dicts) == 5 and "annotations" not in dicts[0]
    assert "1 of 5 images" in caplog.text
    with pytest.raises(ValueError, match="3 classes but MODEL.CLASSIFIER.NUM_CLASSES is 4"):
        get_multilabel_train_dicts(_cfg(name, num_classes=4))


def _voc_fixture(root):
    objects = {
        "000001": [("dog", 0), ("person", 1)],  # person only difficult -> ignore
        "000002": [("cat", 1), ("cat", 0), ("car", 0)],  # one non-difficult cat -> 1
        "000003": [],
    }
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for image_id, objs in objects.items():
        xml = "".join(
            f"<object><name>{n}</name><pose>Left</pose><truncated>0</truncated>"
            f"<difficult>{d}</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax>"
            f"<ymax>9</ymax></bndbox></object>"
            for n, d in objs
        )
        with open(os.path.join(root, "Annotations", f"{image_id}.xml"), "w") as f:
            f.write(f"<annotation><filename>{image_id}.jpg</filename><size><width>40</width>"
                    f"<height>30</height><depth>3</depth></size>{xml}</annotation>")
        _write_jpg(os.path.join(root, "JPEGImages", f"{image_id}.jpg"))
    with open(os.path.join(root, "ImageSets", "Main", "trainval.txt"), "w") as f:
        f.write("\n".join(objects) + "\n")


def test_voc_targets_difficult_is_ignore(tmp_path):
    root = str(tmp_path / "VOC2007")
    _voc_fixture(root)
    dicts = load_voc_cls_dicts(root, "trainval")
    assert [d["image_id"] for d in dicts] == ["000001", "000002", "000003"]
    assert (dicts[0]["height"], dicts[0]["width"]) == (30, 40)
    targets = [multilabel_targets(d, 20, -1) for d in dicts]
    idx = {c: i for i, c in enumerate(VOC_CLASSES)}
    assert targets[0][idx["dog"]] == 1 and targets[0][idx["person"]] == -1
    assert targets[1][idx["cat"]] == 1 and targets[1][idx["car"]] == 1
    assert targets[0].sum() == 1 - 1 and (targets[2] == 0).all()
    with open(os.path.join(root, "Annotations", "000003.xml"), "w") as f:
        f.write("<annotation><object><name>unicorn</name><difficult>0</difficult></object>"
                "</annotation>")
    with pytest.raises(ValueError, match="unicorn"):
        load_voc_cls_dicts(root, "trainval")


def test_builtin_voc_cls_names_are_registered():
    for name in ("voc_2007_trainval_cls", "voc_2007_test_cls"):
        assert name in DatasetCatalog.list()
        assert len(MetadataCatalog.get(name).thing_classes) == 20


def test_label_subset_is_deterministic_and_generated_once(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    ids = list(range(1000, 0, -3))  # unsorted input
    a = sample_label_subset(ids, 0.1, seed=0)
    assert a == sample_label_subset(list(reversed(ids)), 0.1, seed=0)
    assert len(a) == round(0.1 * len(ids)) and a == sorted(a) and set(a) <= set(ids)
    assert a != sample_label_subset(ids, 0.1, seed=1)
    dicts = [{"image_id": i, "file_name": f"{i}.jpg"} for i in ids]
    path = tmp_path / "subsets" / "sub_10pct.txt"
    with pytest.raises(FileNotFoundError, match="make_label_subset"):
        apply_label_subset(dicts, str(path), fraction=0.0)
    kept = apply_label_subset(dicts, str(path), fraction=0.1, seed=0)
    assert "was missing" in caplog.text
    assert [d["image_id"] for d in kept] == [i for i in ids if i in set(a)]
    assert [int(i) for i in load_label_subset(str(path))] == a
    caplog.clear()
    assert apply_label_subset(dicts, str(path), fraction=0.5, seed=3) == kept  # file wins
    assert "was missing" not in caplog.text
    json_path = tmp_path / "ids.json"
    json_path.write_text(json.dumps([ids[0], str(ids[1])]))
    assert len(apply_label_subset(dicts, str(json_path))) == 2


def test_augmentations_output_size():
    image = np.random.RandomState(0).randint(0, 256, (30, 80, 3), dtype=np.uint8)
    for scale in [(0.08, 1.0), (1.0, 1.0)]:  # (1, 1) on a 8:3 image forces the fallback
        out = RandomResizedCrop(16, scale=scale).get_transform(image).apply_image(image)
        assert out.shape == (16, 16, 3)
    assert CenterCrop(24).get_transform(image).apply_image(image).shape == (24, 24, 3)


def test_mapper_and_loaders(tmp_path):
    name = _coco_fixture(tmp_path, "test_multilabel_data_coco_loader")
    cfg = _cfg(name, test=(name,))
    d = DatasetCatalog.get(name)[0]
    out = MultiLabelDatasetMapper(cfg, is_train=True)(d)
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 24, 24)
    assert out["labels"].tolist() == [1.0, 1.0, 0.0] and "annotations" not in out
    broken = dict(d, file_name=str(tmp_path / "missing.jpg"))
    assert MultiLabelDatasetMapper(cfg, is_train=True)(broken) is None
    with pytest.raises(OSError, match="missing.jpg"):
        MultiLabelDatasetMapper(cfg, is_train=False)(broken)
    batch = next(iter(build_multilabel_train_loader(cfg)))
    assert len(batch) == 2 and batch[0]["image"].shape == (3, 24, 24)
    seen = []
    for batch in build_multilabel_test_loader(cfg, name):
        assert len(batch) <= 3
        seen += [x["image_id"] for x in batch]
        assert all(x["image"].shape == (3, 24, 24) for x in batch)
    assert sorted(seen) == [1, 2, 3, 4, 5]


@pytest.mark.skipif(
    not os.path.isdir(os.path.join(SHARED, "coco128_train2017")), reason="shared data absent"
)
def test_targets_match_pycocotools_on_real_coco():
    from pycocotools.coco import COCO

    folder = os.path.join(SHARED, "coco128_train2017")
    json_file = os.path.join(folder, "instances_train2017.json")
    name = "test_multilabel_coco128"
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, json_file, os.path.join(folder, "images"))
    dicts = DatasetCatalog.get(name)
    coco = COCO(json_file)
    cat_ids = sorted(coco.getCatIds())
    assert len(cat_ids) == 80
    assert len(dicts) == len(coco.getImgIds())
    positives = 0
    for d in dicts:
        target = multilabel_targets(d, 80, -1)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[d["image_id"]]))
        expected = np.zeros(80, np.float32)
        expected[[cat_ids.index(a["category_id"]) for a in anns]] = 1
        np.testing.assert_array_equal(target, expected, err_msg=str(d["image_id"]))
        positives += target.sum()
    assert positives > len(dicts)  # multi-label
