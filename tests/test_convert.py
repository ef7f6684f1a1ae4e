"""Weight conversion: torchvision / SwAV / MoCo / ssprl_d2 ResNet checkpoints -> Detectron2."""
import argparse
import importlib.util
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import build_resnet_backbone

from ssprl_d2.checkpoint import (
    D2_AUTHOR,
    ConversionError,
    convert_checkpoint,
    convert_state_dict,
    d2_to_torchvision_name,
    expected_resnet_shapes,
    extract_state_dict,
    infer_depth,
    required_config,
    to_d2_model_dict,
    to_torchvision_state_dict,
    torchvision_to_d2_name,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI_PATH = os.path.join(REPO, "tools", "convert_to_d2.py")


def _load_cli():
    spec = importlib.util.spec_from_file_location("convert_to_d2_cli", CLI_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cli = _load_cli()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _torchvision_resnet(depth: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    # Non-trivial BN statistics, so a mis-mapped running_mean/var changes the features.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.0)
                m.bias.uniform_(-0.1, 0.1)
                m.num_batches_tracked.fill_(7)
    return model.eval()


@pytest.fixture(scope="module")
def tv18():
    return _torchvision_resnet(18)


def _d2_resnet(depth: int, norm: str = "BN"):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth < 50 else 256
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    return build_resnet_backbone(cfg, ShapeSpec(channels=3))


def _torchvision_res5(model, x):
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


def _write_pkl(sd, tmp_path, name="w.pkl"):
    result = convert_state_dict(sd)
    path = str(tmp_path / name)
    with open(path, "wb") as f:
        pickle.dump(to_d2_model_dict(result), f)
    return path, result


# ------------------------------------------------------------------------------------ mapping
def test_names_map_both_ways():
    for depth in (18, 50):
        names = [k for k in torchvision.models.__dict__[f"resnet{depth}"]().state_dict()]
        mapped = {}
        for k in names:
            d2 = torchvision_to_d2_name(k)
            if k.startswith("fc."):
                assert d2 is None
                continue
            assert d2 is not None, k
            assert d2_to_torchvision_name(d2) == k
            mapped[d2] = k
        assert set(mapped) == set(expected_resnet_shapes(depth))
    assert torchvision_to_d2_name("layer2.0.downsample.1.running_var") == (
        "res3.0.shortcut.norm.running_var"
    )
    assert torchvision_to_d2_name("layer1.0.bn2.weight") == "res2.0.conv2.norm.weight"
    assert torchvision_to_d2_name("bn1.bias") == "stem.conv1.norm.bias"
    assert torchvision_to_d2_name("layer1.0.se.fc1.weight") is None


def test_infer_depth():
    for depth in (18, 34, 50, 101, 152):
        assert infer_depth(list(expected_resnet_shapes(depth))) == depth
    names = [n for n in expected_resnet_shapes(50) if not n.startswith("res4.5.")]
    with pytest.raises(ConversionError, match=r"\(3, 4, 5, 3\)"):
        infer_depth(names)


def test_required_config():
    keys = dict(required_config(18))
    assert keys["INPUT.FORMAT"] == "RGB"
    assert keys["MODEL.RESNETS.STRIDE_IN_1X1"] is False
    assert keys["MODEL.RESNETS.RES2_OUT_CHANNELS"] == 64
    assert keys["MODEL.PIXEL_STD"] == [58.395, 57.120, 57.375]
    assert "MODEL.RESNETS.RES2_OUT_CHANNELS" not in dict(required_config(50))


# ------------------------------------------------------------------------------------ round trip
@pytest.mark.parametrize("depth", [18, 50])
def test_round_trip_features_match(depth, tmp_path, tv18):
    tv = tv18 if depth == 18 else _torchvision_resnet(50)
    path, result = _write_pkl(tv.state_dict(), tmp_path)
    assert result.depth == depth and result.dropped == ["fc.bias", "fc.weight"]
    assert result.unmapped == [] and result.filled == []

    backbone = _d2_resnet(depth)
    checkpointer = DetectionCheckpointer(backbone)
    # What DetectionCheckpointer.load does, keeping the incompatible keys it would only log.
    checkpoint = checkpointer._load_file(path)
    assert checkpoint["__author__"] == D2_AUTHOR and checkpoint["matching_heuristics"]
    incompatible = checkpointer._load_model(checkpoint)
    assert incompatible.missing_keys == []
    assert incompatible.unexpected_keys == []
    assert incompatible.incorrect_shapes == []
    for name, value in backbone.state_dict().items():
        torch.testing.assert_close(value, result.model[name], msg=name)

    backbone.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ours = backbone(x)["res5"]
        ref = _torchvision_res5(tv, x)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_load_into_fpn_via_public_load(tmp_path, tv18):
    """The .pkl loads into a model that nests the ResNet deeper (FPN's backbone.bottom_up)."""
    from detectron2.modeling.backbone.fpn import build_resnet_fpn_backbone

    path, result = _write_pkl(tv18.state_dict(), tmp_path)
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "SyncBN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    model = torch.nn.Module()
    model.backbone = build_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))
    DetectionCheckpointer(model).load(path)
    state = model.state_dict()
    for name, value in result.model.items():
        torch.testing.assert_close(state["backbone.bottom_up." + name], value, msg=name)


def test_torchvision_out_loads_into_torchvision(tmp_path, tv18):
    result = convert_state_dict({"module." + k: v for k, v in tv18.state_dict().items()})
    out = str(tmp_path / "tv.pth")
    torch.save(to_torchvision_state_dict(result), out)
    model = torchvision.models.resnet18(weights=None)
    incompatible = model.load_state_dict(torch.load(out, weights_only=True), strict=False)
    assert sorted(incompatible.missing_keys) == ["fc.bias", "fc.weight"]
    assert incompatible.unexpected_keys == []
    for k, v in model.state_dict().items():
        if not k.startswith("fc."):
            torch.testing.assert_close(v, tv18.state_dict()[k], msg=k)


# ------------------------------------------------------------------------------------ variants
def _variants(sd):
    heads = {"projection_head.0.weight": torch.zeros(4, 4), "prototypes.weight": torch.zeros(3, 4)}
    return {
        "plain": (sd, ["fc.bias", "fc.weight"]),
        "module": (
            {"module." + k: v for k, v in sd.items()},
            ["module.fc.bias", "module.fc.weight"],
        ),
        "swav": (
            {
                "state_dict": {
                    **{"module." + k: v for k, v in sd.items() if not k.startswith("fc.")},
                    **{"module." + k: v for k, v in heads.items()},
                },
                "epoch": 3,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
            },
            ["module.projection_head.0.weight", "module.prototypes.weight"],
        ),
        "moco": (
            {
                "state_dict": {
                    **{"module.encoder_q." + k: v for k, v in sd.items()},
                    **{"module.encoder_k." + k: v * 0 for k, v in sd.items()},
                    "module.queue": torch.zeros(128, 16),
                    "module.queue_ptr": torch.zeros(1, dtype=torch.long),
                },
                "arch": "resnet18",
            },
            [
                "module.encoder_q.fc.weight",
                "module.encoder_k.layer1.0.conv1.weight",
                "module.queue",
            ],
        ),
        "encoder_model": (
            {"model": {**{"encoder." + k: v for k, v in sd.items()}, **heads}},
            ["encoder.fc.weight", "projection_head.0.weight", "prototypes.weight"],
        ),
        "backbone_torchvision": (
            {"state_dict": {"backbone." + k: v for k, v in sd.items() if not k.startswith("fc")}},
            [],
        ),
    }


@pytest.mark.parametrize(
    "variant", ["plain", "module", "swav", "moco", "encoder_model", "backbone_torchvision"]
)
def test_prefix_and_wrapper_variants_map_identically(variant, tmp_path, tv18):
    sd = tv18.state_dict()
    reference = convert_state_dict(sd).model
    obj, must_drop = _variants(sd)[variant]
    path = str(tmp_path / "ckpt.pth")
    torch.save(obj, path)
    result = convert_checkpoint(path)
    assert result.source_format == "torchvision" and result.depth == 18
    assert set(result.model) == set(reference)
    for name, value in reference.items():
        torch.testing.assert_close(result.model[name], value, rtol=0, atol=0, msg=name)
    for key in must_drop:
        assert key in result.dropped
    assert len(result.kept) == len(reference)


def test_several_backbones_need_a_prefix(tv18):
    sd = tv18.state_dict()
    both = {**{"online.net." + k: v for k, v in sd.items()}}
    both.update({"target.net." + k: v + 1 for k, v in sd.items() if v.is_floating_point()})
    both.update({"target.net." + k: v for k, v in sd.items() if not v.is_floating_point()})
    with pytest.raises(ConversionError, match="--prefix"):
        convert_state_dict(both)
    result = convert_state_dict(both, prefix="target.net.")
    torch.testing.assert_close(result.model["stem.conv1.weight"], sd["conv1.weight"] + 1)
    assert "online.net.conv1.weight" in result.dropped
    with pytest.raises(ConversionError, match="no ResNet under prefix 'x.'"):
        convert_state_dict(both, prefix="x.")


def _ssprl_checkpoint(seed=0):
    torch.manual_seed(seed)
    backbone = _d2_resnet(18)
    model = {"backbone." + k: v for k, v in backbone.state_dict().items()}
    model.update(
        {
            "heads.0.0.weight": torch.randn(32, 512),
            "heads.1.2.bias": torch.randn(16),
            "prototypes.0.weight": torch.randn(30, 16),
            "cross_learners.0.weight": torch.randn(30, 15),
            "queue_0": torch.randn(64, 16),
        }
    )
    checkpoint = {"model": model, "iteration": 3, "optimizer": {"state": {}, "param_groups": []}}
    return checkpoint, backbone


def test_ssprl_checkpoint_converts_with_heads_dropped(tmp_path):
    ckpt, backbone = _ssprl_checkpoint()
    path = str(tmp_path / "model_final.pth")
    torch.save(ckpt, path)
    result = convert_checkpoint(path)
    assert result.source_format == "detectron2" and result.prefix == "backbone."
    assert result.depth == 18 and result.unmapped == []
    heads = ["heads.0.0.weight", "heads.1.2.bias", "prototypes.0.weight", "cross_learners.0.weight"]
    assert sorted(result.dropped) == sorted(heads + ["queue_0"])
    for name, value in backbone.state_dict().items():
        torch.testing.assert_close(result.model[name], value, rtol=0, atol=0)


def test_detectron2_pkl_input_round_trips(tmp_path, tv18):
    path, first = _write_pkl(tv18.state_dict(), tmp_path)
    second = convert_checkpoint(path)
    assert second.source_format == "detectron2" and second.prefix == ""
    for name, value in first.model.items():
        torch.testing.assert_close(second.model[name], value, rtol=0, atol=0)


def test_extract_state_dict_accepts_numpy_and_rejects_empty():
    sd, skipped = extract_state_dict({"model": {"a": np.zeros(2), "b": "text"}, "__author__": "x"})
    assert list(sd) == ["a"] and isinstance(sd["a"], torch.Tensor) and skipped == ["b"]
    with pytest.raises(ConversionError, match="no tensors"):
        extract_state_dict({"epoch": 3})
    with pytest.raises(ConversionError, match="not a checkpoint"):
        extract_state_dict([1, 2, 3])


def test_missing_num_batches_tracked_is_filled(tv18):
    sd = {k: v for k, v in tv18.state_dict().items() if "num_batches_tracked" not in k}
    result = convert_state_dict(sd)
    assert len(result.filled) == 20 and all("num_batches_tracked" in n for n in result.filled)
    assert int(result.model["stem.conv1.norm.num_batches_tracked"]) == 0


# ------------------------------------------------------------------------------------ CLI
def _run_cli(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err
    message = str(info.value.code)
    assert info.value.code not in (0, None)
    return message + err


def test_cli_converts_and_prints_report(tmp_path, capsys, tv18):
    src = str(tmp_path / "in.pth")
    torch.save({"state_dict": {"module." + k: v for k, v in tv18.state_dict().items()}}, src)
    out, tv_out = str(tmp_path / "out.pkl"), str(tmp_path / "tv.pth")
    result = cli.main([src, out, "--torchvision-out", tv_out])
    text = capsys.readouterr().out
    assert result.depth == 18
    for needle in (
        "ResNet-18",
        "Dropped (not backbone): 2",
        "module.fc.weight",
        "Could not map (look like backbone, no Detectron2 name): 0",
        "INPUT.FORMAT: RGB",
        "MODEL.PIXEL_MEAN: [123.675, 116.280, 103.530]",
        "MODEL.PIXEL_STD: [58.395, 57.120, 57.375]",
        "MODEL.RESNETS.STRIDE_IN_1X1: False",
        "MODEL.RESNETS.DEPTH: 18",
        "MODEL.RESNETS.RES2_OUT_CHANNELS: 64",
    ):
        assert needle in text, needle
    with open(out, "rb") as f:
        data = pickle.load(f)
    assert data["__author__"] == "ssprl_d2 convert_to_d2" and data["matching_heuristics"] is True
    assert all(isinstance(v, np.ndarray) for v in data["model"].values())
    assert not any(k.startswith("backbone.") for k in data["model"])
    assert os.path.isfile(tv_out)


def test_cli_missing_tensor(tmp_path, capsys, tv18):
    sd = dict(tv18.state_dict())
    del sd["layer3.1.bn2.running_var"]
    src = str(tmp_path / "missing.pth")
    torch.save(sd, src)
    msg = _run_cli([src, str(tmp_path / "o.pkl")], capsys)
    assert "missing tensor" in msg and "res4.1.conv2.norm.running_var" in msg
    assert not os.path.exists(tmp_path / "o.pkl")


def test_cli_wrong_shape(tmp_path, capsys, tv18):
    sd = dict(tv18.state_dict())
    sd["layer2.0.conv1.weight"] = torch.zeros(128, 64, 1, 1)
    src = str(tmp_path / "shape.pth")
    torch.save(sd, src)
    msg = _run_cli([src, str(tmp_path / "o.pkl")], capsys)
    assert "wrong shape" in msg and "res3.0.conv1.weight" in msg and "(128, 64, 3, 3)" in msg


def test_cli_wrong_depth(tmp_path, capsys, tv18):
    src = str(tmp_path / "r18.pth")
    torch.save(tv18.state_dict(), src)
    msg = _run_cli([src, str(tmp_path / "o.pkl"), "--depth", "34"], capsys)
    assert "ResNet-34" in msg and "missing tensor" in msg


def test_cli_not_a_resnet(tmp_path, capsys):
    mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    src = str(tmp_path / "mlp.pth")
    torch.save(mlp.state_dict(), src)
    msg = _run_cli([src, str(tmp_path / "o.pkl")], capsys)
    assert "not a ResNet checkpoint" in msg


def test_cli_truncated_and_garbage_files(tmp_path, capsys, tv18):
    src = str(tmp_path / "full.pth")
    torch.save(tv18.state_dict(), src)
    with open(src, "rb") as f:
        data = f.read()
    for name, content in (("trunc.pth", data[: len(data) // 2]), ("junk.pth", b"\x00junk" * 50)):
        path = str(tmp_path / name)
        with open(path, "wb") as f:
            f.write(content)
        msg = _run_cli([path, str(tmp_path / "o.pkl")], capsys)
        assert "truncated, corrupt or not a checkpoint" in msg, msg
    # A truncated plain pickle (Detectron2 .pkl format).
    pkl, _ = _write_pkl(tv18.state_dict(), tmp_path, "ok.pkl")
    with open(pkl, "rb") as f:
        data = f.read()
    with open(pkl, "wb") as f:
        f.write(data[: len(data) // 3])
    msg = _run_cli([pkl, str(tmp_path / "o.pkl")], capsys)
    assert "truncated, corrupt or not a checkpoint" in msg


class _SideEffect:
    """Unpickling this creates a file: a stand-in for malicious code in a pickle."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("fmt", ["torch", "pickle"])
def test_cli_refuses_code_in_pickle(fmt, tmp_path, capsys, tv18):
    marker = str(tmp_path / "PWNED")
    obj = {"state_dict": tv18.state_dict(), "hook": _SideEffect(marker)}
    src = str(tmp_path / ("evil.pth" if fmt == "torch" else "evil.pkl"))
    if fmt == "torch":
        torch.save(obj, src)
    else:
        with open(src, "wb") as f:
            pickle.dump({k: v.numpy() if torch.is_tensor(v) else v for k, v in obj.items()}, f)
    msg = _run_cli([src, str(tmp_path / "o.pkl")], capsys)
    assert "--trust-pickle" in msg and "refusing to unpickle" in msg
    assert not os.path.exists(marker)


def test_cli_trust_pickle_accepts_real_checkpoint_only(tmp_path, capsys, tv18):
    # Some training scripts pickle an argparse.Namespace next to the weights.
    src = str(tmp_path / "with_args.pth")
    torch.save({"state_dict": tv18.state_dict(), "args": argparse.Namespace(lr=0.1)}, src)
    msg = _run_cli([src, str(tmp_path / "o.pkl")], capsys)
    assert "--trust-pickle" in msg
    result = cli.main([src, str(tmp_path / "o.pkl"), "--trust-pickle"])
    assert result.depth == 18 and os.path.isfile(tmp_path / "o.pkl")
    capsys.readouterr()
    # Trusted but not a checkpoint at all.
    torch.save({"args": argparse.Namespace(lr=0.1)}, src)
    msg = _run_cli([src, str(tmp_path / "o2.pkl"), "--trust-pickle"], capsys)
    assert "not a checkpoint" in msg


def test_cli_subprocess_exits_cleanly_without_traceback(tmp_path):
    mlp = torch.nn.Linear(4, 2)
    src = str(tmp_path / "mlp.pth")
    torch.save(mlp.state_dict(), src)
    proc = subprocess.run(
        [sys.executable, CLI_PATH, src, str(tmp_path / "o.pkl")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "convert_to_d2: error: not a ResNet checkpoint" in proc.stderr
