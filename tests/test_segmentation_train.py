"""Segmentation transfer end to end: every segmentation YAML through the real ``setup()``, and
the demo config trained for a few iterations by the real Trainer, evaluated by
``SemSegEvaluator``, then again through ``tools/train_net.py --eval-only`` and ``--resume``."""
import glob
import math
import os
import pickle
from argparse import Namespace

import pytest
import torch
import torchvision
from detectron2.data import DatasetCatalog, MetadataCatalog

import ssprl_d2  # noqa: F401  (registers datasets and models)
from ssprl_d2.checkpoint import convert_state_dict, to_d2_model_dict
from ssprl_d2.config import TASK_SEGMENT, task_of
from ssprl_d2.engine import build_trainer
from ssprl_d2.engine.setup import load_config, setup
from ssprl_d2.pipeline import transfer as run_transfer

from tool_utils import load_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEG_DIR = os.path.join(REPO, "configs", "segmentation")
LEAVES = sorted(p for p in glob.glob(os.path.join(SEG_DIR, "*.yaml"))
                if not os.path.basename(p).startswith("Base"))
DEMO = ["DATASETS.TRAIN", "('ssprl_demo_sem_seg_train',)",
        "DATASETS.TEST", "('ssprl_demo_sem_seg_val',)", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "9"]

train_net = load_tool("tools/train_net.py")  # tools/ is not a package

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_leaves_present():
    assert {os.path.basename(p) for p in LEAVES} == {
        "fcn_R50_D8_voc12aug_512x512_20k.yaml",
        "fcn_R50_D8_voc12aug_512x512_20k_random_init.yaml",
        "fcn_R50_D8_cityscapes_769x769_40k.yaml",
        "fcn_demo.yaml",
    }


@pytest.mark.parametrize("path", LEAVES, ids=os.path.basename)
def test_every_yaml_merges_through_setup(path, tmp_path):
    args = Namespace(config_file=path, eval_only=False, resume=False,
                     opts=DEMO + ["MODEL.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path)])
    cfg = setup(args)
    assert task_of(cfg) == TASK_SEGMENT and cfg.is_frozen()
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_dilated_backbone"
    assert (cfg.MODEL.RESNETS.RES4_DILATION, cfg.MODEL.RESNETS.RES5_DILATION) == (2, 4)
    assert cfg.MODEL.RESNETS.STEM_TYPE == "basic" and list(cfg.MODEL.RESNETS.RES5_MULTI_GRID) == [
        1, 1, 1]
    assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False
    assert list(cfg.MODEL.PIXEL_MEAN) == [123.675, 116.280, 103.530]
    assert cfg.MODEL.RESNETS.NORM == cfg.MODEL.SEM_SEG_HEAD.NORM == "SyncBN"
    assert cfg.MODEL.FCN.AUX_LOSS_WEIGHT == 0.4 and cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE == 255
    assert os.path.exists(tmp_path / "config.yaml")


def test_protocol_settings():
    voc = load_config(os.path.join(SEG_DIR, "fcn_R50_D8_voc12aug_512x512_20k.yaml"),
                      DEMO[:4] + ["MODEL.WEIGHTS", ""])
    assert voc.SOLVER.MAX_ITER == 20000 and voc.SOLVER.IMS_PER_BATCH == 16
    assert (voc.SOLVER.BASE_LR, voc.SOLVER.MOMENTUM, voc.SOLVER.WEIGHT_DECAY) == (0.05, 0.9, 5e-4)
    assert voc.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR" and voc.SOLVER.POLY_LR_POWER == 0.9
    assert voc.SOLVER.BASE_LR * voc.SOLVER.POLY_LR_CONSTANT_ENDING == pytest.approx(1e-4)
    assert tuple(voc.INPUT.CROP.SIZE) == (512, 512)
    assert voc.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA == 0.75 and voc.TEST.SEM_SEG.MODE == "whole"
    assert (voc.INPUT.MIN_SIZE_TEST, voc.INPUT.MAX_SIZE_TEST) == (512, 2048)
    city = load_config(os.path.join(SEG_DIR, "fcn_R50_D8_cityscapes_769x769_40k.yaml"),
                       DEMO + ["MODEL.WEIGHTS", ""])
    assert city.SOLVER.MAX_ITER == 40000 and tuple(city.INPUT.CROP.SIZE) == (769, 769)
    assert city.MODEL.FCN.ALIGN_CORNERS and city.TEST.SEM_SEG.MODE == "slide"
    assert tuple(city.TEST.SEM_SEG.STRIDE) == (513, 513)
    assert "cityscapes_fine_sem_seg_train" in DatasetCatalog.list()


def _val_subset(name="ssprl_demo_sem_seg_val_first3", size=3):
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: DatasetCatalog.get("ssprl_demo_sem_seg_val")[:size])
        src = MetadataCatalog.get("ssprl_demo_sem_seg_val")
        MetadataCatalog.get(name).set(stuff_classes=src.stuff_classes, ignore_label=255,
                                      evaluator_type="sem_seg")
    return name


def test_demo_trains_evaluates_and_reloads(tmp_path):
    torch.manual_seed(0)
    weights = str(tmp_path / "r18.pkl")
    with open(weights, "wb") as f:
        pickle.dump(to_d2_model_dict(convert_state_dict(
            torchvision.models.resnet18(weights=None).state_dict())), f)
    opts = ["MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path / "out"),
            "DATASETS.TEST", f"('{_val_subset()}',)", "SOLVER.MAX_ITER", "2",
            "SOLVER.IMS_PER_BATCH", "2", "INPUT.CROP.SIZE", "(64, 64)",
            "INPUT.MIN_SIZE_TEST", "64", "DATALOADER.NUM_WORKERS", "0",
            "SOLVER.CHECKPOINT_PERIOD", "1"]
    config = os.path.join(SEG_DIR, "fcn_demo.yaml")
    cfg = load_config(config, opts)
    cfg.freeze()
    trainer = build_trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = trainer._last_eval_results["sem_seg"]
    assert math.isfinite(results["mIoU"]) and 0 <= results["mIoU"] <= 100
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    assert os.path.isfile(final)

    def args(**kw):
        base = dict(config_file=config, eval_only=False, resume=False, opts=list(opts))
        base.update(kw)
        return Namespace(**base)

    again = train_net.run(args(eval_only=True, opts=opts + ["MODEL.WEIGHTS", final]))
    assert again["sem_seg"]["mIoU"] == pytest.approx(results["mIoU"])
    # --resume after the end: loads model_final / last_checkpoint, trains nothing more.
    resumed = train_net.run(args(resume=True))
    assert resumed is None or resumed == {} or "sem_seg" in resumed


def test_transfer_runner_writes_the_segmentation_table(tmp_path):
    calls = []

    def launcher(argv, log_file):
        calls.append(argv)
        out = argv[argv.index("OUTPUT_DIR") + 1]
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "metrics.json"), "w") as f:
            f.write('{"iteration": 9, "sem_seg/mIoU": 42.5, "sem_seg/pACC": 90.0}\n')
        return 0

    names = ["seg_voc12aug_20k", "seg_cityscapes_40k", "demo_fcn"]
    results = run_transfer.run_transfer(str(tmp_path / "w.pkl"), names, str(tmp_path / "out"),
                                        repo_root=REPO, launcher=launcher, log=lambda *a: None)
    assert {n: r["sem_seg/mIoU"] for n, r in results.items()} == {n: 42.5 for n in names}
    configs = [c[c.index("--config-file") + 1] for c in calls]
    assert configs == [run_transfer.PROTOCOLS[n].config for n in names]
    table = (tmp_path / "out" / "transfer_results.md").read_text()
    assert "semantic segmentation" in table and "mIoU (ours)" in table and "42.5" in table
