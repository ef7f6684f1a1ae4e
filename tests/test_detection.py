"""Mask R-CNN transfer: the detection configs, SyncBN on one process, converted weights in a
detector, and a few iterations of the real Trainer with COCO box/mask evaluation."""
import glob
import math
import os
import pickle

import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.layers import get_norm
from detectron2.modeling import build_model

import ssprl_d2  # noqa: F401  (registers datasets and models)
from ssprl_d2.checkpoint import convert_state_dict, to_d2_model_dict
from ssprl_d2.config import add_ssprl_config
from ssprl_d2.data import DEMO_CATEGORIES
from ssprl_d2.engine import build_trainer, trainer_class
from ssprl_d2.config import TASK_DETECT, task_of
from ssprl_d2.engine.setup import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DET_DIR = os.path.join(REPO, "configs", "detection")
LEAVES = sorted(
    p
    for p in glob.glob(os.path.join(DET_DIR, "*.yaml"))
    if not os.path.basename(p).startswith("Base")
)
NO_DATA = ["DATASETS.TRAIN", "()", "DATASETS.TEST", "()"]


def _merge(path, opts=()):
    cfg = get_cfg()
    add_ssprl_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(list(opts))
    return cfg


def _write_converted(model: torch.nn.Module, path: str) -> dict:
    result = convert_state_dict(model.state_dict())
    with open(path, "wb") as f:
        pickle.dump(to_d2_model_dict(result), f)
    return result.model


def test_leaves_present():
    names = {os.path.basename(p) for p in LEAVES}
    assert names == {
        "mask_rcnn_R50_FPN_coco2014_15k.yaml",
        "mask_rcnn_R50_FPN_1x.yaml",
        "mask_rcnn_R50_FPN_coco2014_15k_random_init.yaml",
        "mask_rcnn_demo.yaml",
    }


@pytest.mark.parametrize("path", LEAVES, ids=os.path.basename)
def test_every_yaml_loads_through_load_config(path):
    cfg = load_config(path, NO_DATA)
    assert task_of(cfg) == TASK_DETECT
    # What SSL weights need (RGB, torchvision mean/std, STRIDE_IN_1X1 False), in every leaf.
    assert cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN" and cfg.MODEL.MASK_ON
    assert cfg.INPUT.FORMAT == "RGB"
    assert list(cfg.MODEL.PIXEL_MEAN) == [123.675, 116.280, 103.530]
    assert list(cfg.MODEL.PIXEL_STD) == [58.395, 57.120, 57.375]
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0
    for norm in (
        cfg.MODEL.RESNETS.NORM,
        cfg.MODEL.FPN.NORM,
        cfg.MODEL.ROI_BOX_HEAD.NORM,
        cfg.MODEL.ROI_MASK_HEAD.NORM,
    ):
        assert norm == "SyncBN"
    assert (cfg.MODEL.ROI_BOX_HEAD.NUM_CONV, cfg.MODEL.ROI_BOX_HEAD.NUM_FC) == (4, 1)
    assert cfg.SOLVER.AMP.ENABLED is False
    assert cfg.TEST.EVAL_PERIOD == 0


def test_schedules_and_datasets():
    c15 = _merge(os.path.join(DET_DIR, "mask_rcnn_R50_FPN_coco2014_15k.yaml"))
    assert c15.DATASETS.TRAIN == ("coco_2014_train",) and c15.DATASETS.TEST == ("coco_2014_val",)
    assert c15.SOLVER.MAX_ITER == 15000 and tuple(c15.SOLVER.STEPS) == (10000, 13333)
    assert (c15.SOLVER.IMS_PER_BATCH, c15.SOLVER.BASE_LR) == (16, 0.02)
    assert c15.MODEL.RESNETS.DEPTH == 50 and c15.MODEL.WEIGHTS.endswith(".pkl")

    c1x = _merge(os.path.join(DET_DIR, "mask_rcnn_R50_FPN_1x.yaml"))
    assert c1x.DATASETS.TRAIN == ("coco_2017_train",) and c1x.DATASETS.TEST == ("coco_2017_val",)
    assert c1x.SOLVER.MAX_ITER == 90000 and tuple(c1x.SOLVER.STEPS) == (60000, 80000)
    for name in c1x.DATASETS.TRAIN + c15.DATASETS.TRAIN:
        assert name in DatasetCatalog.list()

    rnd = _merge(os.path.join(DET_DIR, "mask_rcnn_R50_FPN_coco2014_15k_random_init.yaml"))
    assert rnd.MODEL.WEIGHTS == "" and rnd.SOLVER.MAX_ITER == 15000
    assert tuple(rnd.SOLVER.STEPS) == (10000, 13333) and rnd.MODEL.RESNETS.NORM == "SyncBN"

    demo = _merge(os.path.join(DET_DIR, "mask_rcnn_demo.yaml"))
    assert demo.DATASETS.TRAIN == ("ssprl_demo_train",)
    assert demo.DATASETS.TEST == ("ssprl_demo_val",)
    assert demo.MODEL.ROI_HEADS.NUM_CLASSES == len(DEMO_CATEGORIES)
    assert demo.MODEL.RESNETS.DEPTH == 18 and demo.MODEL.RESNETS.RES2_OUT_CHANNELS == 64
    assert demo.MODEL.DEVICE == "cpu" and 2 <= demo.SOLVER.IMS_PER_BATCH <= 4
    assert demo.SOLVER.MAX_ITER <= 500


def test_missing_coco_error_is_clear():
    path = os.path.join(DET_DIR, "mask_rcnn_R50_FPN_coco2014_15k.yaml")
    if os.path.exists(MetadataCatalog.get("coco_2014_train").image_root):
        pytest.skip("COCO 2014 is installed here")
    with pytest.raises(FileNotFoundError) as info:
        load_config(path)
    message = str(info.value)
    assert "coco_2014_train" in message and "DETECTRON2_DATASETS" in message


def test_syncbn_runs_on_one_process_without_process_group():
    assert not (torch.distributed.is_available() and torch.distributed.is_initialized())
    norm = get_norm("SyncBN", 4)
    norm.train()
    x = torch.randn(3, 4, 5, 5, requires_grad=True)
    y = norm(x)
    y.sum().backward()
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    assert int(norm.num_batches_tracked) == 1 and x.grad is not None


def test_converted_r50_loads_into_mask_rcnn_15k():
    """Every ResNet tensor of the paper's detector is filled from a converted torchvision R50."""
    path = os.path.join(DET_DIR, "mask_rcnn_R50_FPN_coco2014_15k.yaml")
    cfg = _merge(path, ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    assert isinstance(model.backbone.bottom_up.stem.conv1.norm, torch.nn.SyncBatchNorm)
    assert isinstance(model.backbone.fpn_lateral2.norm, torch.nn.SyncBatchNorm)
    assert isinstance(model.roi_heads.box_head.conv1.norm, torch.nn.SyncBatchNorm)
    assert isinstance(model.roi_heads.mask_head.mask_fcn1.norm, torch.nn.SyncBatchNorm)
    torch.manual_seed(0)
    checkpointer = DetectionCheckpointer(model)
    converted = convert_state_dict(torchvision.models.resnet50(weights=None).state_dict())
    checkpoint = to_d2_model_dict(converted)
    # DetectionCheckpointer.load on a .pkl ends here; keep the incompatible keys it only logs.
    incompatible = checkpointer._load_model(checkpoint)
    missing = [k for k in incompatible.missing_keys if k.startswith("backbone.bottom_up.")]
    assert missing == [] and incompatible.incorrect_shapes == []
    state = model.state_dict()
    for name, value in converted.model.items():
        assert torch.equal(state["backbone.bottom_up." + name], value), name


def _register_val_subset(name: str, size: int) -> str:
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: DatasetCatalog.get("ssprl_demo_val")[:size])
        MetadataCatalog.get(name).set(
            thing_classes=list(MetadataCatalog.get("ssprl_demo_val").thing_classes),
            evaluator_type="coco",
        )
    return name


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_mask_rcnn_demo_trains_and_evaluates_with_converted_weights(tmp_path):
    torch.manual_seed(0)
    weights = str(tmp_path / "r18.pkl")
    converted = _write_converted(torchvision.models.resnet18(weights=None), weights)
    val = _register_val_subset("ssprl_demo_val_first4", 4)
    cfg = load_config(
        os.path.join(DET_DIR, "mask_rcnn_demo.yaml"),
        [
            "MODEL.WEIGHTS", weights,
            "OUTPUT_DIR", str(tmp_path / "out"),
            "DATASETS.TEST", f"('{val}',)",
            "SOLVER.MAX_ITER", "2",
            "SOLVER.IMS_PER_BATCH", "2",
            "SOLVER.STEPS", "()",
            "SOLVER.WARMUP_ITERS", "1",
            "INPUT.MIN_SIZE_TRAIN", "(96,)",
            "INPUT.MAX_SIZE_TRAIN", "128",
            "INPUT.MIN_SIZE_TEST", "96",
            "INPUT.MAX_SIZE_TEST", "128",
            "DATALOADER.NUM_WORKERS", "0",
            # Keep every detection of the barely trained model so AP is a number, not NaN.
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
        ],
    )
    cfg.freeze()
    trainer = build_trainer(cfg)
    trainer.resume_or_load(resume=False)
    stem = trainer.model.backbone.bottom_up.stem.conv1.weight
    assert torch.equal(stem.detach(), converted["stem.conv1.weight"])
    trainer.train()  # two iterations, then the final evaluation hook runs Trainer.test
    results = trainer._last_eval_results
    assert set(results) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        for metric in ("AP", "AP50", "AP75"):
            assert math.isfinite(results[task][metric]), (task, metric, results[task])
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))

    # Evaluating the trained model again through Trainer.test gives the same numbers.
    again = trainer_class(cfg).test(cfg, trainer.model)
    assert again["bbox"]["AP"] == pytest.approx(results["bbox"]["AP"])
