"""Dataset registration, path checks, robust image reading and the skipped-images hook."""
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    MetadataCatalog,
    build_detection_train_loader,
)
from detectron2.data import transforms as T
from detectron2.data.datasets import register_pascal_voc
from detectron2.engine import SimpleTrainer
from PIL import Image

from ssprl_d2.config import add_ssprl_config
from ssprl_d2.data.datasets import (
    check_datasets_exist,
    register_coco_json,
    register_demo_datasets,
    register_from_config,
    register_image_folder,
)
from ssprl_d2.data.image_io import num_skipped_images, read_image_or_none
from ssprl_d2.engine.hooks import SkippedImagesLogger


def _write_image(path, size=(20, 16), seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def bad_files(tmp_path):
    """A valid JPEG plus four unreadable files: garbage, truncated JPEG, text, missing."""
    good = str(tmp_path / "good.jpg")
    _write_image(good, size=(64, 48))
    with open(good, "rb") as f:
        data = f.read()
    paths = {"good": good}
    for name, content in (
        ("garbage.jpg", bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8))),
        ("truncated.jpg", data[: len(data) // 2]),
        ("notes.png", b"this is a text file, not an image\n"),
    ):
        paths[name] = str(tmp_path / name)
        with open(paths[name], "wb") as f:
            f.write(content)
    paths["missing.jpg"] = str(tmp_path / "missing.jpg")
    return paths


# ---------------------------------------------------------------------------------------------
# Path checks
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["coco_2014_train", "coco_2014_val", "voc_2007_trainval", "voc_2007_test"]
)
def test_builtin_missing_dataset_names_path_and_variable(name):
    meta = MetadataCatalog.get(name)
    expected = meta.get("json_file") or meta.get("dirname")
    if os.path.exists(expected):
        pytest.skip(f"{expected} exists here")
    with pytest.raises(FileNotFoundError) as e:
        check_datasets_exist([name])
    assert expected in str(e.value) and "DETECTRON2_DATASETS" in str(e.value)


def test_voc_check_names_the_missing_split_file(tmp_path):
    voc = tmp_path / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    register_pascal_voc("test_voc_partial", str(voc), "test", 2007)
    MetadataCatalog.get("test_voc_partial").evaluator_type = "pascal_voc"
    with pytest.raises(FileNotFoundError, match="ImageSets/Main/test.txt"):
        check_datasets_exist(["test_voc_partial"])
    (voc / "ImageSets/Main/test.txt").write_text("000001\n")
    check_datasets_exist(["test_voc_partial"])


def test_demo_names_pass_without_generation(tmp_path):
    names = register_demo_datasets(str(tmp_path / "demo"), prefix="test_check_demo")
    check_datasets_exist(names + ["ssprl_demo_train", "ssprl_demo_val"])
    assert not (tmp_path / "demo").exists()


def test_unregistered_name_is_a_key_error():
    with pytest.raises(KeyError, match="not_a_dataset"):
        check_datasets_exist(["not_a_dataset"])


# ---------------------------------------------------------------------------------------------
# Image folders and COCO jsons
# ---------------------------------------------------------------------------------------------
def test_image_folder_tree_is_sorted_and_label_free(tmp_path):
    folder = tmp_path / "imagenet"
    for rel in ("n02/b.JPEG", "n01/z.png", "n01/a.jpg", "n02/sub/c.jpeg"):
        _write_image(str(folder / rel))
    (folder / "n01" / "readme.txt").write_text("not an image")
    register_image_folder("test_folder_tree", str(folder))
    check_datasets_exist(["test_folder_tree"])
    dicts = DatasetCatalog.get("test_folder_tree")
    rel = [os.path.relpath(d["file_name"], folder) for d in dicts]
    assert rel == ["n01/a.jpg", "n01/z.png", "n02/b.JPEG", "n02/sub/c.jpeg"]
    assert [d["image_id"] for d in dicts] == [0, 1, 2, 3]
    assert all(set(d) == {"file_name", "image_id"} for d in dicts)


def test_image_folder_missing_or_empty(tmp_path):
    missing = str(tmp_path / "nowhere")
    register_image_folder("test_folder_missing", missing)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        check_datasets_exist(["test_folder_missing"])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        DatasetCatalog.get("test_folder_missing")
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("x")
    register_image_folder("test_folder_empty", str(empty))
    with pytest.raises(FileNotFoundError, match="no image file"):
        DatasetCatalog.get("test_folder_empty")


def test_coco_json_missing_paths(tmp_path):
    json_file = str(tmp_path / "ann" / "instances.json")
    register_coco_json("test_coco_missing", json_file, str(tmp_path))
    with pytest.raises(FileNotFoundError) as e:
        check_datasets_exist(["test_coco_missing"])
    assert json_file in str(e.value) and "DETECTRON2_DATASETS" in str(e.value)
    with pytest.raises(FileNotFoundError, match="instances.json"):
        DatasetCatalog.get("test_coco_missing")


def test_register_from_config_is_idempotent_and_checks(tmp_path):
    folder = tmp_path / "imgs"
    _write_image(str(folder / "x.jpg"))
    cfg = add_ssprl_config(get_cfg())
    cfg.DATASETS.SSPRL.IMAGE_FOLDERS = [["test_cfg_folder", str(folder)]]
    cfg.DATASETS.SSPRL.COCO_JSONS = [
        ["test_cfg_coco", str(tmp_path / "a.json"), str(folder)],
    ]
    cfg.DATASETS.TRAIN = ("test_cfg_folder", "ssprl_demo_train")
    cfg.DATASETS.TEST = ("ssprl_demo_val",)
    register_from_config(cfg)
    register_from_config(cfg)  # same arguments: skipped
    assert len(DatasetCatalog.get("test_cfg_folder")) == 1

    cfg.DATASETS.TEST = ("test_cfg_coco",)
    with pytest.raises(FileNotFoundError, match="a.json"):
        register_from_config(cfg)
    cfg.DATASETS.SSPRL.IMAGE_FOLDERS = [["test_cfg_folder", str(tmp_path / "other")]]
    with pytest.raises(ValueError, match="test_cfg_folder"):
        register_from_config(cfg)
    cfg.DATASETS.SSPRL.IMAGE_FOLDERS = [["only_a_name"]]
    with pytest.raises(ValueError, match="IMAGE_FOLDERS"):
        register_from_config(cfg)


def test_load_config_registers_folders(tmp_path):
    from ssprl_d2.engine.setup import load_config

    folder = tmp_path / "flat"
    _write_image(str(folder / "1.png"))
    _write_image(str(folder / "2.png"))
    cfg = load_config(
        "",
        [
            "DATASETS.SSPRL.IMAGE_FOLDERS",
            f"[['test_load_cfg_folder', '{folder}']]",
            "DATASETS.TRAIN",
            "('test_load_cfg_folder',)",
        ],
    )
    assert cfg.DATASETS.TRAIN == ("test_load_cfg_folder",)
    assert len(DatasetCatalog.get("test_load_cfg_folder")) == 2


# ---------------------------------------------------------------------------------------------
# Robust image reading
# ---------------------------------------------------------------------------------------------
def test_read_image_or_none(bad_files, caplog):
    before = num_skipped_images()
    image = read_image_or_none(bad_files["good"], format="BGR")
    assert image.shape == (48, 64, 3) and image.dtype == np.uint8
    for name in ("garbage.jpg", "truncated.jpg", "notes.png", "missing.jpg"):
        assert read_image_or_none(bad_files[name]) is None
        assert name in caplog.text
    assert num_skipped_images() == before + 4


class _ReadDataset(torch.utils.data.Dataset):
    def __init__(self, files):
        self.files = files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        return read_image_or_none(self.files[i]) is None


def test_counter_is_shared_with_forked_workers(bad_files):
    files = [bad_files[n] for n in ("good", "garbage.jpg", "truncated.jpg", "notes.png")] * 2
    before = num_skipped_images()
    loader = torch.utils.data.DataLoader(
        _ReadDataset(files), batch_size=1, num_workers=2, multiprocessing_context="fork"
    )
    failed = sum(bool(b) for b in loader)
    assert failed == 6
    assert num_skipped_images() == before + 6


class _ToyModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, batch):
        return {"loss": (self.w * batch).sum()}


def test_skipped_images_hook_reports_the_count(bad_files):
    read_image_or_none(bad_files["garbage.jpg"])
    model = _ToyModel()
    data = iter(lambda: torch.ones(1), None)
    trainer = SimpleTrainer(model, data, torch.optim.SGD(model.parameters(), lr=0.0))
    trainer.register_hooks([SkippedImagesLogger(period=2)])
    trainer.train(0, 5)
    history = trainer.storage.history("data/skipped_images")
    assert [it for _, it in history.values()] == [1, 3, 4]
    assert history.latest() == num_skipped_images() >= 1


# ---------------------------------------------------------------------------------------------
# Real data (optional)
# ---------------------------------------------------------------------------------------------
def test_real_coco_subset_through_detectron2_loader(shared_data_dir):
    name = "test_coco128_train2017"
    if name not in DatasetCatalog.list():
        register_coco_json(
            name,
            os.path.join(shared_data_dir, "instances_train2017.json"),
            os.path.join(shared_data_dir, "images"),
        )
    check_datasets_exist([name])
    dicts = DatasetCatalog.get(name)
    assert len(dicts) >= 100
    mapper = DatasetMapper(
        is_train=True,
        augmentations=[T.ResizeShortestEdge(48, max_size=80)],
        image_format="RGB",
        use_instance_mask=True,
    )
    loader = build_detection_train_loader(
        dicts, mapper=mapper, total_batch_size=2, num_workers=0, aspect_ratio_grouping=False
    )
    for i, batch in enumerate(loader):
        assert len(batch) == 2
        for record in batch:
            assert record["image"].shape[0] == 3 and max(record["image"].shape[1:]) <= 80
            assert len(record["instances"].gt_masks) == len(record["instances"].gt_boxes)
        if i == 1:
            break


def test_demo_through_detectron2_loader(demo_root):
    mapper = DatasetMapper(
        is_train=True,
        augmentations=[T.ResizeShortestEdge(64, max_size=96), T.RandomFlip()],
        image_format="RGB",
        use_instance_mask=True,
    )
    loader = build_detection_train_loader(
        DatasetCatalog.get("ssprl_demo_val"),
        mapper=mapper,
        total_batch_size=2,
        num_workers=0,
        aspect_ratio_grouping=False,
    )
    batch = next(iter(loader))
    for record in batch:
        masks = record["instances"].gt_masks
        assert 1 <= len(masks) <= 4
        assert len(masks.polygons) == len(masks)
