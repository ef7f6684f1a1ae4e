"""End-to-end: the real Trainer on (a small copy of) the demo data in linear and fine-tune mode,
fast linear evaluation, and every classification config through the real set-up."""
import copy
import glob
import os

import pytest
import torch
from detectron2.config import get_cfg

from ssprl_d2.config import add_ssprl_config, validate_config
from ssprl_d2.data.datasets import register_demo_datasets
from ssprl_d2.engine import build_trainer, trainer_class
from ssprl_d2.engine.fast_linear import run_fast_linear
from ssprl_d2.engine.setup import load_config
from ssprl_d2.engine.preflight import check_classifier_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs", "classification")
PREFIX = "test_multilabel_demo"


def validate_classifier_config(cfg):
    """The classifier's start-up checks: its keys, then its weights and datasets."""
    validate_config(cfg)
    check_classifier_inputs(cfg)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A 40 / 16 image copy of the demo dataset (same generator, generated in ~3 s)."""
    from detectron2.data import DatasetCatalog

    if f"{PREFIX}_train" not in DatasetCatalog.list():
        root = str(tmp_path_factory.mktemp("demo"))
        register_demo_datasets(root=root, prefix=PREFIX, num_train=40, num_val=16)
    return f"{PREFIX}_train", f"{PREFIX}_val"


def tiny_opts(demo, output_dir, max_iter=4):
    return [
        "DATASETS.TRAIN", (demo[0],), "DATASETS.TEST", (demo[1],),
        "SOLVER.EPOCHS", 0.0, "SOLVER.MAX_ITER", max_iter, "SOLVER.IMS_PER_BATCH", 8,
        "TEST.IMS_PER_BATCH", 8, "DATALOADER.NUM_WORKERS", 0,
        "INPUT.CLASSIFICATION.TRAIN_CROP_SIZE", 64, "INPUT.CLASSIFICATION.TEST_RESIZE", 72,
        "INPUT.CLASSIFICATION.TEST_CROP_SIZE", 64, "OUTPUT_DIR", str(output_dir),
    ]  # fmt: skip


def run_trainer(cfg):
    torch.manual_seed(0)
    trainer = build_trainer(cfg)
    trainer.resume_or_load(resume=False)
    before = copy.deepcopy(trainer.model.backbone.state_dict())
    trainer.train()
    results = trainer.storage.latest()
    return trainer, before, results


def test_linear_demo_trainer_keeps_backbone_and_reports_map(demo, tmp_path):
    cfg = load_config(os.path.join(CONFIGS, "linear_demo.yaml"), tiny_opts(demo, tmp_path))
    validate_classifier_config(cfg)
    trainer, before, results = run_trainer(cfg)
    after = trainer.model.backbone.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    mean_ap = results["classification/mAP"][0]
    assert 0 < mean_ap <= 100
    assert os.path.exists(tmp_path / "inference" / "multilabel_results.json")


def test_finetune_demo_trainer_on_label_subset(demo, tmp_path):
    subset = tmp_path / "subset.txt"
    opts = tiny_opts(demo, tmp_path) + [
        "DATASETS.CLASSIFICATION.LABEL_SUBSET", str(subset),
        "DATASETS.CLASSIFICATION.LABEL_SUBSET_FRACTION", 0.5,
    ]
    cfg = load_config(os.path.join(CONFIGS, "finetune_demo.yaml"), opts)
    assert cfg.MODEL.CLASSIFIER.MODE == "finetune"
    trainer, before, results = run_trainer(cfg)
    assert len(subset.read_text().split()) == 20
    after = trainer.model.backbone.state_dict()
    assert not torch.equal(before["res2.0.conv1.weight"], after["res2.0.conv1.weight"])
    assert 0 < results["classification/mAP"][0] <= 100


def test_fast_linear_matches_standard_evaluation_of_its_model(demo, tmp_path):
    opts = tiny_opts(demo, tmp_path, max_iter=10) + [
        "MODEL.CLASSIFIER.FAST_LINEAR.ENABLED", True,
        "MODEL.CLASSIFIER.FAST_LINEAR.CACHE_TO_DISK", True,
        "MODEL.CLASSIFIER.FAST_LINEAR.TRAIN_AUG_PASSES", 2,
    ]
    cfg = load_config(os.path.join(CONFIGS, "linear_demo.yaml"), opts)
    validate_classifier_config(cfg)
    torch.manual_seed(0)
    results = run_fast_linear(cfg)
    mean_ap = results["classification"]["mAP"]
    assert 0 < mean_ap <= 100
    assert len(glob.glob(str(tmp_path / "fast_linear_cache" / "train*.pth"))) == 2
    # The saved model (backbone + trained head), evaluated by the standard path, agrees.
    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = str(tmp_path / "model_final.pth")
    model = trainer_class(cfg).build_model(cfg)
    from detectron2.checkpoint import DetectionCheckpointer

    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    standard = trainer_class(cfg).test(cfg, model)
    assert standard["classification"]["mAP"] == pytest.approx(mean_ap, abs=1e-3)
    # Second run reuses the cached features and gives the same result.
    torch.manual_seed(0)
    cfg.MODEL.WEIGHTS = ""
    assert run_fast_linear(cfg.clone())["classification"]["mAP"] == pytest.approx(mean_ap)


@pytest.mark.parametrize(
    "name", sorted(os.path.basename(p) for p in glob.glob(os.path.join(CONFIGS, "*.yaml")))
)
def test_every_classification_config_merges_and_validates(name, demo, tmp_path):
    cfg = get_cfg()
    add_ssprl_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIGS, name))
    assert cfg.MODEL.META_ARCHITECTURE == "MultiLabelClassifier"
    assert cfg.INPUT.FORMAT == "RGB" and not cfg.MODEL.RESNETS.STRIDE_IN_1X1
    if "demo" not in str(cfg.DATASETS.TRAIN):
        # Real datasets are absent here: validate the keys without touching them.
        cfg.DATASETS.TRAIN = cfg.DATASETS.TEST = ()
        validate_classifier_config(cfg)
        return
    opts = ["DATASETS.TRAIN", (demo[0],), "DATASETS.TEST", (demo[1],), "OUTPUT_DIR", str(tmp_path)]
    if cfg.DATASETS.CLASSIFICATION.LABEL_SUBSET:
        opts += ["DATASETS.CLASSIFICATION.LABEL_SUBSET", str(tmp_path / "subset.txt")]
    cfg = load_config(os.path.join(CONFIGS, name), opts)
    validate_classifier_config(cfg)
    assert cfg.SOLVER.MAX_ITER > 0
