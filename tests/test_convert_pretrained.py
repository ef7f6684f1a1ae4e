"""An ssprl_d2 checkpoint from a real short pre-training run converts to Detectron2 weights that
reproduce the pre-trained backbone exactly, and the classifier/detector load it."""
import os
import subprocess
import sys

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_backbone
from detectron2.utils.env import seed_all_rng

from ssprl_d2.config import add_ssprl_config
from ssprl_d2.engine import build_trainer

from pretrain_utils import REPO, tiny_pretrain_cfg, write_image_folder


def test_real_pretraining_checkpoint_round_trip(tmp_path):
    folder = write_image_folder(str(tmp_path / "imgs"), n=8)
    cfg = tiny_pretrain_cfg(folder, str(tmp_path / "run"), extra=["SOLVER.MAX_ITER", "2"])
    seed_all_rng(0)
    trainer = build_trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    ckpt = str(tmp_path / "run" / "model_final.pth")
    out = str(tmp_path / "ssprl_r18.pkl")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "convert_to_d2.py"), ckpt, out],
        capture_output=True, text=True, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    printed = proc.stdout
    assert "STRIDE_IN_1X1" in printed and "RGB" in printed
    assert "prototypes" in printed or "dropped" in printed.lower()

    d2 = get_cfg()
    add_ssprl_config(d2)
    d2.MODEL.RESNETS.DEPTH = 18
    d2.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    d2.MODEL.RESNETS.STRIDE_IN_1X1 = False
    d2.MODEL.RESNETS.NORM = "BN"
    d2.MODEL.BACKBONE.FREEZE_AT = 0
    d2.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    backbone = build_backbone(d2)

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone

    holder = Holder()
    DetectionCheckpointer(holder).load(out)
    pretrained = trainer.model.backbone.eval()
    holder.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x)["res5"], pretrained(x)["res5"], rtol=1e-5,
                                   atol=1e-5)
    # Every backbone tensor (a missing key would keep its random init) matches.
    for k, v in pretrained.state_dict().items():
        torch.testing.assert_close(backbone.state_dict()[k], v, msg=k)
