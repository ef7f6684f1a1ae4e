"""Every YAML under configs/ merges through the real set-up (keys, validation, epochs)."""
import glob
import os
from argparse import Namespace

import pytest

from ssprl_d2.config import task_of
from ssprl_d2.engine.setup import load_config, setup

from pretrain_utils import REPO

CONFIGS = sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"),
                                                recursive=True)
)
DEMO = ["DATASETS.TRAIN", "('ssprl_demo_train',)", "DATASETS.TEST", "('ssprl_demo_val',)"]


@pytest.mark.parametrize("path", CONFIGS)
def test_every_config_merges(path):
    from detectron2.config import get_cfg

    from ssprl_d2.config import add_ssprl_config

    raw = get_cfg()
    add_ssprl_config(raw)
    raw.merge_from_file(os.path.join(REPO, path))  # unknown keys / type errors fail here
    # COCO / VOC are not on CI machines: the demo splits stand in (8 classes).
    opts = list(DEMO) + ["MODEL.CLASSIFIER.NUM_CLASSES", "8", "MODEL.ROI_HEADS.NUM_CLASSES", "8",
                         "DATASETS.CLASSIFICATION.LABEL_SUBSET", ""]
    if raw.MODEL.META_ARCHITECTURE == "SSPRL":
        opts = ["DATASETS.TRAIN", "('ssprl_demo_train',)", "DATASETS.TEST", "()"]
    weights = raw.MODEL.WEIGHTS
    if weights and not os.path.exists(weights) and "://" not in weights:
        opts += ["MODEL.WEIGHTS", ""]
    cfg = load_config(os.path.join(REPO, path), opts)
    assert cfg.SOLVER.MAX_ITER > 0
    assert task_of(cfg) in ("pretrain", "classification", "detection", "segmentation")


def test_setup_runs_default_setup(tmp_path):
    args = Namespace(
        config_file=os.path.join(REPO, "configs/ssprl_demo.yaml"),
        opts=["OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", "3"],
        eval_only=False,
        resume=False,
    )
    cfg = setup(args)
    assert cfg.is_frozen()
    assert os.path.exists(tmp_path / "config.yaml")


def test_missing_coco_names_the_path_and_variable(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="DETECTRON2_DATASETS"):
        load_config(os.path.join(REPO, "configs/ssprl_pretrain.yaml"))


def test_paper_config_epochs_become_iterations():
    cfg = load_config(
        os.path.join(REPO, "configs/ssprl_pretrain.yaml"),
        ["DATASETS.TRAIN", "('ssprl_demo_train',)", "SOLVER.IMS_PER_BATCH", "32",
         "SOLVER.EPOCHS", "2.0"],
    )
    # 480 demo images at batch 32: 15 iterations per epoch; the queue starts at epoch 80.
    assert cfg.SOLVER.MAX_ITER == 30
    assert cfg.MODEL.SSPRL.QUEUE.START_ITER == 80 * 15
    # Linear lr scaling from the reference batch 128.
    assert cfg.SOLVER.BASE_LR == pytest.approx(0.6 * 32 / 128)
    assert cfg.SOLVER.BASE_LR_END == pytest.approx(0.0006 * 32 / 128)


@pytest.mark.parametrize(
    "old, new",
    [
        ("INPUT.SSPRL.PIXEL_MEAN", "MODEL.PIXEL_MEAN"),
        ("DATASETS.SSPRL.LABEL_SUBSET", "DATASETS.CLASSIFICATION.LABEL_SUBSET"),
    ],
)
def test_renamed_key_names_its_new_key(old, new, tmp_path):
    value = "[1.0, 2.0, 3.0]" if "PIXEL" in old else "ids.txt"
    with pytest.raises(KeyError, match=f"{old} was renamed to {new}"):
        load_config(os.path.join(REPO, "configs/ssprl_demo.yaml"), [old, value])
    leaf = tmp_path / "old.yaml"
    section, node, key = old.split(".")
    leaf.write_text(f"_BASE_: {os.path.join(REPO, 'configs/ssprl_demo.yaml')}\n"
                    f"{section}:\n  {node}:\n    {key}: {value}\n")
    with pytest.raises(KeyError, match=f"{old} was renamed to {new}"):
        load_config(str(leaf))


def test_one_trainer_per_job():
    from ssprl_d2.engine import (
        ClassificationTrainer,
        DetectionTrainer,
        PretrainTrainer,
        SegmentationTrainer,
        trainer_class,
    )

    expected = {
        "configs/ssprl_demo.yaml": PretrainTrainer,
        "configs/classification/linear_demo.yaml": ClassificationTrainer,
        "configs/detection/mask_rcnn_demo.yaml": DetectionTrainer,
        "configs/segmentation/fcn_demo.yaml": SegmentationTrainer,
    }
    for rel, cls in expected.items():
        cfg = load_config(os.path.join(REPO, rel), ["MODEL.WEIGHTS", ""])
        assert trainer_class(cfg) is cls, rel
    with pytest.raises(NotImplementedError, match="no evaluator.*classification or detection"):
        PretrainTrainer.build_evaluator(cfg, "ssprl_demo_val")
    assert PretrainTrainer.test(cfg, model=None) == {}
