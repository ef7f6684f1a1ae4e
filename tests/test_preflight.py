"""Fail before the hour: an unwritable or full OUTPUT_DIR and a missing MODEL.WEIGHTS stop the
job at start-up (``setup``) with a message that names the key."""
import argparse
import os
import shutil

import pytest
import torch

from ssprl_d2.engine import build_trainer, preflight
from ssprl_d2.engine.setup import setup

from pretrain_utils import tiny_pretrain_cfg, write_image_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {
    "pretrain": "configs/ssprl_demo.yaml",
    "classification": "configs/classification/linear_demo.yaml",
    "detection": "configs/detection/mask_rcnn_demo.yaml",
}


def _args(config: str, opts, resume=False):
    return argparse.Namespace(
        config_file=os.path.join(REPO, config), opts=list(opts), resume=resume, eval_only=False,
        num_gpus=1, num_machines=1, machine_rank=0, dist_url="auto",
    )  # fmt: skip


@pytest.mark.parametrize("job", sorted(CONFIGS))
def test_unwritable_output_dir_fails_at_setup(job, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = str(blocker / "out")  # a folder below a regular file cannot exist, even for root
    with pytest.raises(OSError, match="OUTPUT_DIR") as e:
        setup(_args(CONFIGS[job], ["OUTPUT_DIR", out, "MODEL.DEVICE", "cpu"]))
    assert out in str(e.value)


def test_full_output_dir_fails_at_setup(tmp_path, monkeypatch):
    real = shutil.disk_usage

    def full(path):
        return real(path)._replace(free=1000)

    monkeypatch.setattr(preflight.shutil, "disk_usage", full)
    with pytest.raises(OSError, match="OUTPUT_DIR .* MiB free"):
        setup(_args(CONFIGS["pretrain"], ["OUTPUT_DIR", str(tmp_path / "out")]))


def test_probe_write_error_says_disk_full(tmp_path, monkeypatch):
    def enospc(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(preflight.tempfile, "NamedTemporaryFile", enospc)
    with pytest.raises(OSError, match="OUTPUT_DIR .*disk is full"):
        preflight.check_output_dir(str(tmp_path / "out"))


def test_trainer_checks_room_for_one_checkpoint(tmp_path, monkeypatch):
    folder = write_image_folder(str(tmp_path / "imgs"), n=8)
    cfg = tiny_pretrain_cfg(folder, str(tmp_path / "out"))
    real = shutil.disk_usage
    # Room for the start-up probe (1 MiB), not for a checkpoint of the tiny model.
    monkeypatch.setattr(
        preflight.shutil, "disk_usage", lambda p: real(p)._replace(free=(1 << 20) + 1)
    )
    with pytest.raises(OSError, match="one checkpoint of this job needs"):
        build_trainer(cfg)


@pytest.mark.parametrize("job", sorted(CONFIGS))
def test_missing_weights_fail_at_setup(job, tmp_path):
    missing = str(tmp_path / "nope.pkl")
    opts = ["OUTPUT_DIR", str(tmp_path / "out"), "MODEL.WEIGHTS", missing]
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS") as e:
        setup(_args(CONFIGS[job], opts))
    assert missing in str(e.value)


def test_resume_with_checkpoint_ignores_missing_weights(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    torch.save({"model": {}}, str(out / "model_0000001.pth"))
    (out / "last_checkpoint").write_text("model_0000001.pth")
    opts = ["OUTPUT_DIR", str(out), "MODEL.WEIGHTS", str(tmp_path / "gone.pth")]
    cfg = setup(_args(CONFIGS["pretrain"], opts, resume=True))
    assert cfg.OUTPUT_DIR == str(out)
