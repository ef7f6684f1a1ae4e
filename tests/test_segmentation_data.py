"""Semantic segmentation data: VOC 2012 aug registration (fixture tree), the demo's semantic
split, and the mmseg-style augmentations."""
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from PIL import Image

import ssprl_d2  # noqa: F401  (registers datasets)
from ssprl_d2.data.demo import DEMO_NUM_VAL
from ssprl_d2.data.demo_semantic import DEMO_SEM_SEG_CLASSES, instances_to_label
from ssprl_d2.data.seg_transforms import (
    PadToSize,
    PhotoMetricDistortion,
    RandomRatioResize,
    rescale_size,
)
from ssprl_d2.data.segmentation_mapper import SemSegDatasetMapper, read_label_png
from ssprl_d2.data.voc_segmentation import register_voc_sem_seg
from ssprl_d2.engine.setup import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOC = os.path.join(REPO, "configs", "segmentation", "fcn_R50_D8_voc12aug_512x512_20k.yaml")
VOC_PALETTE = [v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)]


def _write_voc_tree(root, ids=("2007_000032", "2007_000039", "2008_000001")):
    voc = os.path.join(root, "VOC2012")
    for sub in ("JPEGImages", "SegmentationClassAug", "SegmentationClass",
                "ImageSets/Segmentation"):
        os.makedirs(os.path.join(voc, sub), exist_ok=True)
    rng = np.random.default_rng(0)
    for k, image_id in enumerate(ids):
        h, w = 48 + 8 * k, 64
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            os.path.join(voc, "JPEGImages", image_id + ".jpg"))
        label = np.zeros((h, w), np.uint8)
        label[10:30, 10:40] = k + 1
        label[9, :] = 255  # an ignored boundary
        Image.fromarray(label, mode="L").save(os.path.join(voc, "SegmentationClassAug",
                                                           image_id + ".png"))
        palette = Image.fromarray(label, mode="P")  # VOC's own labels are palette PNGs
        palette.putpalette(VOC_PALETTE)
        palette.save(os.path.join(voc, "SegmentationClass", image_id + ".png"))
    lists = os.path.join(voc, "ImageSets", "Segmentation")
    with open(os.path.join(lists, "train_aug.txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    with open(os.path.join(lists, "val.txt"), "w") as f:
        f.write(ids[0] + "\n")
    return voc


def test_voc_fixture_registers_and_loads(tmp_path):
    _write_voc_tree(str(tmp_path))
    train, val = register_voc_sem_seg(str(tmp_path), prefix="fixture_voc_sem_seg")
    records = DatasetCatalog.get(train)
    assert len(records) == 3 and len(DatasetCatalog.get(val)) == 1
    assert MetadataCatalog.get(train).ignore_label == 255
    assert len(MetadataCatalog.get(train).stuff_classes) == 21
    # The palette PNG of val reads as class indices, not as palette colours.
    val_label = read_label_png(DatasetCatalog.get(val)[0]["sem_seg_file_name"])
    assert set(np.unique(val_label)) == {0, 1, 255}

    cfg = load_config(VOC, ["DATASETS.TRAIN", f"('{train}',)", "DATASETS.TEST", f"('{val}',)",
                            "MODEL.WEIGHTS", "", "INPUT.CROP.SIZE", "(32, 32)"])
    mapped = SemSegDatasetMapper(cfg, True)(records[2])
    assert mapped["image"].shape == (3, 32, 32) and mapped["image"].dtype == torch.uint8
    assert mapped["sem_seg"].shape == (32, 32) and mapped["sem_seg"].dtype == torch.long
    assert set(mapped["sem_seg"].unique().tolist()) <= {0, 3, 255}
    test = SemSegDatasetMapper(cfg, False)(records[0])
    assert "sem_seg" not in test and test["image"].shape[-2] == 512  # short side -> 512


def test_missing_voc_folder_fails_at_start_up_naming_it(tmp_path):
    voc = _write_voc_tree(str(tmp_path))
    os.rename(os.path.join(voc, "SegmentationClassAug"), os.path.join(voc, "elsewhere"))
    train, val = register_voc_sem_seg(str(tmp_path), prefix="fixture_voc_missing")
    with pytest.raises(FileNotFoundError, match="SegmentationClassAug"):
        load_config(VOC, ["DATASETS.TRAIN", f"('{train}',)", "DATASETS.TEST", f"('{val}',)",
                          "MODEL.WEIGHTS", ""])
    with pytest.raises(FileNotFoundError, match="train_aug.txt"):
        DatasetCatalog.get(train)  # the loader's own message names every expected path


def test_default_voc_names_report_missing_data():
    if os.path.isdir(os.path.dirname(MetadataCatalog.get("voc_2012_sem_seg_val").image_root)):
        pytest.skip("VOC 2012 is installed here")
    with pytest.raises(FileNotFoundError) as info:
        load_config(VOC, ["MODEL.WEIGHTS", ""])
    message = str(info.value)
    assert "SegmentationClassAug" in message and "train_aug.txt" in message
    assert "DETECTRON2_DATASETS" in message


def test_demo_semantic_split_rasterises_instances():
    records = DatasetCatalog.get("ssprl_demo_sem_seg_val")
    instances = DatasetCatalog.get("ssprl_demo_val")
    assert len(records) == len(instances) == DEMO_NUM_VAL
    assert MetadataCatalog.get("ssprl_demo_sem_seg_val").stuff_classes == DEMO_SEM_SEG_CLASSES
    for rec, inst in list(zip(records, instances))[:5]:
        assert rec["file_name"] == inst["file_name"]
        label = read_label_png(rec["sem_seg_file_name"])
        assert label.shape == (inst["height"], inst["width"])
        assert 0 in label  # background
        expected = {a["category_id"] + 1 for a in inst["annotations"]}
        assert set(np.unique(label)) - {0} <= expected and set(np.unique(label)) != {0}


def test_instances_to_label_paints_later_on_top():
    square = [[2.0, 2.0, 8.0, 2.0, 8.0, 8.0, 2.0, 8.0]]
    inner = [[4.0, 4.0, 6.0, 4.0, 6.0, 6.0, 4.0, 6.0]]
    label = instances_to_label([{"segmentation": square, "category_id": 0},
                                {"segmentation": inner, "category_id": 4}], 10, 10)
    assert label[0, 0] == 0 and label[3, 3] == 1 and label[5, 5] == 5


def test_augmentations_follow_mmseg():
    assert rescale_size(375, 500, 2048, 512) == (512, 683)
    assert rescale_size(1024, 2048, 2049, 1025) == (1025, 2049)  # mmcv rounds half up
    rng_state = np.random.get_state()
    np.random.seed(0)
    image = np.random.randint(0, 255, (40, 60, 3), dtype=np.uint8)
    label = np.zeros((40, 60), dtype=np.float64)
    label[:, 30:] = 1
    for _ in range(20):
        t = RandomRatioResize((2048, 512), (0.5, 2.0)).get_transform(image)
        out = t.apply_image(image)
        factor = out.shape[0] / 40
        assert 256 / 40 * 0.99 <= factor <= 1024 / 40 * 1.01  # short side 512 x [0.5, 2]
    aug = T.AugInput(image, sem_seg=label)
    T.AugmentationList([PadToSize((48, 64), [124, 116, 104], 255)])(aug)
    assert aug.image.shape == (48, 64, 3) and (aug.image[45, 62] == [124, 116, 104]).all()
    assert aug.sem_seg.shape == (48, 64) and aug.sem_seg[45, 62] == 255 and aug.sem_seg[0, 40] == 1
    photo = PhotoMetricDistortion()
    for _ in range(10):
        t = photo.get_transform(image)
        out = t.apply_image(image)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert t.apply_segmentation(label) is label
    np.random.set_state(rng_state)
