"""No weights file runs code, in any job: hostile .pkl / .pth files (their payload would write a
marker file) are refused with the file, its content and MODEL.WEIGHTS_TRUST_PICKLE named;
the project's own checkpoints, converter outputs and model-zoo style .pkl files still load."""
import argparse
import os
import pickle
import re

import numpy as np
import pytest
import torch
import torchvision
from detectron2.modeling import build_model

import ssprl_d2  # noqa: F401  (registers datasets and models)
from ssprl_d2.checkpoint import (
    ConversionError,
    SSPRLCheckpointer,
    convert_state_dict,
    save_d2_pickle,
)
from ssprl_d2.checkpoint.safe_load import SAFE_TORCH_GLOBALS
from ssprl_d2.engine import build_trainer
from ssprl_d2.engine.setup import load_config
from ssprl_d2.engine.setup import load_ssprl_checkpoint

from pretrain_utils import tiny_pretrain_cfg, write_image_folder
from tool_utils import load_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
train_net = load_tool("tools/train_net.py")  # tools/ is not a package

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Payload:
    """Unpickling this object runs ``exec``, which writes the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('payload ran')",))


def hostile_file(tmp_path, fmt: str, model_state=None) -> tuple:
    """A weights file that carries a payload next to real tensors; returns (path, marker)."""
    marker = str(tmp_path / f"marker_{fmt}")
    path = str(tmp_path / f"hostile.{fmt}")
    state = model_state or {"w": np.zeros(3, np.float32)}
    if fmt == "pkl":
        with open(path, "wb") as f:
            pickle.dump({"model": state, "__author__": "evil", "x": Payload(marker)}, f)
    else:
        tensors = {k: torch.as_tensor(v) for k, v in state.items()}
        torch.save({"model": tensors, "x": Payload(marker)}, path)
    return path, marker


def assert_refused(excinfo, path: str, marker: str) -> None:
    msg = str(excinfo.value)
    assert path in msg and "MODEL.WEIGHTS_TRUST_PICKLE" in msg, msg
    assert re.search(r"exec", msg), msg  # what the file contained
    assert not os.path.exists(marker), "the payload ran"


def tiny_model() -> torch.nn.Module:
    model = torch.nn.Module()
    model.lin = torch.nn.Linear(3, 2)
    return model


@pytest.mark.parametrize("fmt", ["pkl", "pth"])
def test_checkpointer_refuses_payload(fmt, tmp_path):
    path, marker = hostile_file(tmp_path, fmt)
    with pytest.raises(ConversionError) as e:
        SSPRLCheckpointer(tiny_model()).load(path)
    assert_refused(e, path, marker)


@pytest.mark.parametrize("fmt", ["pkl", "pth"])
def test_classification_startup_refuses_payload(fmt, tmp_path):
    path, marker = hostile_file(tmp_path, fmt)
    with pytest.raises(ConversionError) as e:
        load_config(
            os.path.join(REPO, "configs/classification/linear_demo.yaml"),
            ["MODEL.WEIGHTS", path, "OUTPUT_DIR", str(tmp_path / "out")],
        )
    assert_refused(e, path, marker)


@pytest.mark.parametrize("fmt", ["pkl", "pth"])
def test_detection_eval_only_refuses_payload(fmt, tmp_path):
    path, marker = hostile_file(tmp_path, fmt)
    args = argparse.Namespace(
        config_file=os.path.join(REPO, "configs/detection/mask_rcnn_demo.yaml"),
        eval_only=True,
        resume=False,
        opts=["MODEL.WEIGHTS", path, "OUTPUT_DIR", str(tmp_path / "out"), "MODEL.DEVICE", "cpu"],
        num_gpus=1,
        num_machines=1,
        machine_rank=0,
        dist_url="auto",
    )
    with pytest.raises(ConversionError) as e:
        train_net.run(args)
    assert_refused(e, path, marker)


def test_visualisation_refuses_payload(tmp_path):
    path, marker = hostile_file(tmp_path, "pth")
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(f"_BASE_: {os.path.join(REPO, 'configs/ssprl_demo.yaml')}\n")
    with pytest.raises(ConversionError) as e:
        load_ssprl_checkpoint(path, config_file=str(cfg_file), opts=["MODEL.DEVICE", "cpu"])
    assert_refused(e, path, marker)


def test_trusted_file_loads_with_the_key(tmp_path):
    """The opt-out: a trusted file with a non-tensor object loads when the key is set."""
    model = tiny_model()
    path = str(tmp_path / "trusted.pth")
    state = {k: v + 1 for k, v in model.state_dict().items()}
    torch.save({"model": state, "extra": argparse.Namespace(a=1)}, path)
    with pytest.raises(ConversionError, match="MODEL.WEIGHTS_TRUST_PICKLE"):
        SSPRLCheckpointer(model).load(path)
    left = SSPRLCheckpointer(model, trust_pickle=True).load(path)
    assert left["extra"].a == 1
    torch.testing.assert_close(model.lin.weight, state["lin.weight"])


def test_model_zoo_and_converter_pkl_load(tmp_path):
    model = tiny_model()
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    zoo = str(tmp_path / "zoo.pkl")
    with open(zoo, "wb") as f:
        pickle.dump({"model": {"lin.weight": w, "lin.bias": np.ones(2, np.float32)},
                     "__author__": "zoo", "matching_heuristics": True}, f)
    SSPRLCheckpointer(model).load(zoo)
    np.testing.assert_array_equal(model.lin.weight.detach().numpy(), w)
    caffe2 = str(tmp_path / "c2.pkl")
    with open(caffe2, "wb") as f:  # Caffe2 / Detectron1 style: "blobs" of arrays
        pickle.dump({"blobs": {"lin.weight": w * 2, "lin.bias": np.zeros(2, np.float32)}}, f)
    SSPRLCheckpointer(model).load(caffe2)
    np.testing.assert_array_equal(model.lin.weight.detach().numpy(), w * 2)

    tv = torchvision.models.resnet18(weights=None)
    out = str(tmp_path / "r18.pkl")
    result = convert_state_dict(tv.state_dict())
    save_d2_pickle(result, out)
    holder = torch.nn.Module()
    cfg = load_config(os.path.join(REPO, "configs/ssprl_demo.yaml"), ["MODEL.DEVICE", "cpu"])
    holder.backbone = build_model(cfg).backbone
    SSPRLCheckpointer(holder).load(out)
    torch.testing.assert_close(
        holder.backbone.stem.conv1.weight, result.model["stem.conv1.weight"]
    )


def test_own_training_checkpoint_loads_safely(tmp_path):
    """A real pre-training checkpoint (model, optimizer, scheduler, iteration) loads with
    weights_only=True and no allow-listed types (measured: none are needed)."""
    folder = write_image_folder(str(tmp_path / "imgs"), n=8)
    cfg = tiny_pretrain_cfg(folder, str(tmp_path / "out"), extra=["SOLVER.MAX_ITER", "2"])
    trainer = build_trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    data = torch.load(final, weights_only=True)
    assert {"model", "trainer", "iteration"} <= set(data)
    assert "LRScheduler" in data["trainer"]["hooks"]
    assert SAFE_TORCH_GLOBALS == []
    resumed = build_trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2


# The one reader of checkpoint files, and the one checkpointer class.
_ALLOWED_READERS = ("ssprl_d2/checkpoint/safe_load.py", "ssprl_d2/checkpoint/checkpointer.py")
_RAW_LOAD = re.compile(r"(?<!`)\b(torch|pickle)\.load\(")  # not in ``docs``


def test_no_job_builds_detectron2_checkpointer_directly():
    """Every job goes through SSPRLCheckpointer: no DetectionCheckpointer( call elsewhere."""
    offenders = []
    for top in ("ssprl_d2", "tools"):
        for root, _, files in os.walk(os.path.join(REPO, top)):
            for name in files:
                p = os.path.join(root, name)
                rel = os.path.relpath(p, REPO)
                if not name.endswith(".py") or rel in _ALLOWED_READERS:
                    continue
                text = open(p).read()
                if "DetectionCheckpointer(" in text or _RAW_LOAD.search(text):
                    offenders.append(rel)
    assert offenders == []
