"""FCN R50-D8 transfer: the dilated backbone (converted weights, known answer against
torchvision's dilated ResNet), the FCN heads with the auxiliary loss, and the two test modes."""
import os
from unittest import mock

import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model
from detectron2.projects.deeplab import build_resnet_deeplab_backbone
from detectron2.utils.events import EventStorage
from torch.nn import functional as F

import ssprl_d2  # noqa: F401  (registers the backbone, head and meta-architecture)
from ssprl_d2.checkpoint import convert_state_dict, to_d2_model_dict
from ssprl_d2.config import add_ssprl_config
from ssprl_d2.modeling.dilated_resnet import stage_dilations
from ssprl_d2.modeling.semantic_seg import sliding_windows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOC = os.path.join(REPO, "configs", "segmentation", "fcn_R50_D8_voc12aug_512x512_20k.yaml")
TINY = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.RESNETS.DEPTH", "18",
        "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", "16", "MODEL.FCN.AUX_CONVS_DIM", "8"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(path=VOC, opts=()):
    cfg = get_cfg()
    add_ssprl_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(list(opts))
    return cfg


def _inputs(n=2, size=64, num_classes=21):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        label = torch.randint(0, num_classes, (size, size), generator=g)
        label[: size // 4] = 255  # an ignored band
        image = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
        out.append({"image": image, "sem_seg": label, "height": size, "width": size})
    return out


def test_fcn_builds_from_voc_config_and_trains_with_ignore_label():
    torch.manual_seed(0)
    model = build_model(_cfg(opts=TINY))
    head = model.sem_seg_head
    assert type(model).__name__ == "SlidingWindowSemanticSegmentor"
    assert len(head.decode.convs) == 2 and head.decode.conv_cat is not None
    assert head.decode.conv_cat.in_channels == 512 + 16  # res5 of R18 + decode width
    assert len(head.aux.convs) == 1 and head.aux.conv_cat is None
    assert head.decode.dropout.p == 0.1 and head.aux.dropout.p == 0.1
    assert isinstance(head.decode.convs[0].norm, torch.nn.SyncBatchNorm)
    assert isinstance(model.backbone.stem.conv1.norm, torch.nn.SyncBatchNorm)
    assert model.backbone.output_shape()["res5"].stride == 8
    assert head.ignore_value == 255 and head.aux_loss_weight == 0.4

    model.train()
    for m in model.modules():  # deterministic heads, BN still in training mode
        if isinstance(m, torch.nn.Dropout2d):
            m.eval()
    inputs = _inputs()
    with EventStorage():
        losses = model(inputs)
    assert set(losses) == {"loss_sem_seg", "loss_sem_seg_aux"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.backbone.stem.conv1.weight.grad is not None
    assert head.aux.predictor.weight.grad is not None

    # The auxiliary term is 0.4 x the cross-entropy of the res4 head (ignored pixels count 0).
    with torch.no_grad():
        images = torch.stack([(x["image"] - model.pixel_mean) / model.pixel_std for x in inputs])
        targets = torch.stack([x["sem_seg"] for x in inputs])
        aux = F.interpolate(head.aux(model.backbone(images)["res4"]), size=(64, 64),
                            mode="bilinear", align_corners=False)
        ce = F.cross_entropy(aux, targets, ignore_index=255, reduction="none").mean()
    torch.testing.assert_close(losses["loss_sem_seg_aux"].detach(), 0.4 * ce)


def test_inference_has_no_auxiliary_head_and_returns_full_size_logits():
    model = build_model(_cfg(opts=TINY)).eval()
    inputs = [{"image": torch.randint(0, 256, (3, 60, 76), dtype=torch.uint8),
               "height": 120, "width": 152}]
    with mock.patch.object(model.sem_seg_head.aux, "forward", side_effect=AssertionError):
        with torch.no_grad():
            (out,) = model(inputs)
    assert out["sem_seg"].shape == (21, 120, 152)

    # Sliding windows as large as the image give the whole-image logits.
    whole = out["sem_seg"]
    model.test_mode, model.test_crop_size, model.test_stride = "slide", (64, 80), (48, 48)
    with torch.no_grad():
        (slide,) = model(inputs)
    torch.testing.assert_close(slide["sem_seg"], whole)


def test_sliding_windows_match_mmseg_grid():
    windows = sliding_windows(1024, 2048, (769, 769), (513, 513))
    assert len(windows) == 2 * 4
    assert windows[0] == (0, 769, 0, 769) and windows[-1] == (255, 1024, 1279, 2048)
    cover = torch.zeros(1024, 2048)
    for y0, y1, x0, x1 in windows:
        assert (y1 - y0, x1 - x0) == (769, 769)
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1
    assert sliding_windows(100, 120, (769, 769), (513, 513)) == [(0, 100, 0, 120)]


def test_stage_dilations_contract():
    assert stage_dilations(6, 2, True) == [1, 2, 2, 2, 2, 2]
    assert stage_dilations(3, 4, True) == [2, 4, 4]
    assert stage_dilations(3, 4, False) == [4, 4, 4]
    assert stage_dilations(3, 2, True, [1, 2, 4]) == [2, 4, 8]  # DeepLab multi-grid
    assert stage_dilations(2, 1, True) == [1, 1]


def _converted(tv_model):
    return to_d2_model_dict(convert_state_dict(tv_model.state_dict()))


def test_converted_r50_loads_into_dilated_backbone_with_no_missing_key():
    torch.manual_seed(0)
    cfg = _cfg(opts=["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    model = build_model(cfg)
    checkpoint = _converted(torchvision.models.resnet50(weights=None))
    # DetectionCheckpointer.load on a .pkl ends here; keep the incompatible keys it only logs.
    incompatible = DetectionCheckpointer(model)._load_model(checkpoint)
    missing = [k for k in incompatible.missing_keys if k.startswith("backbone.")]
    assert missing == [] and incompatible.incorrect_shapes == []
    assert incompatible.unexpected_keys == []
    # Detectron2's DeepLab backbone with the basic stem and no multi-grid has the same tensors.
    deeplab = build_resnet_deeplab_backbone(cfg, ShapeSpec(channels=3))
    ours = {k: v.shape for k, v in model.backbone.state_dict().items()}
    assert {k: v.shape for k, v in deeplab.state_dict().items()} == ours


@pytest.mark.parametrize("depth", [18, 50])
def test_res5_equals_plain_backbone_without_dilation(depth):
    torch.manual_seed(0)
    tv = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    weights = convert_state_dict(tv.state_dict()).model
    common = ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", str(depth),
              "MODEL.RESNETS.RES2_OUT_CHANNELS", "64" if depth == 18 else "256",
              "MODEL.RESNETS.NORM", "BN", "MODEL.RESNETS.OUT_FEATURES", "['res5']"]
    off = ["MODEL.RESNETS.RES4_DILATION", "1", "MODEL.RESNETS.RES5_DILATION", "1"]
    plain_cfg = _cfg(opts=common + off + ["MODEL.BACKBONE.NAME", "build_resnet_backbone"])
    off_cfg = _cfg(opts=common + off)
    plain, off = build_backbone(plain_cfg).eval(), build_backbone(off_cfg).eval()
    for net in (plain, off):
        assert net.load_state_dict(weights, strict=True) is not None
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(off(x)["res5"], plain(x)["res5"])


def test_dilated_r50_equals_torchvision_dilated_resnet():
    """torchvision's replace_stride_with_dilation halves the first block's dilation, like mmseg's
    contract_dilation: a known answer for res4 d2 / res5 d4."""
    torch.manual_seed(0)
    tv = torchvision.models.resnet50(weights=None,
                                     replace_stride_with_dilation=[False, True, True]).eval()
    cfg = _cfg(opts=["MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "BN"])
    ours = build_backbone(cfg).eval()
    ours.load_state_dict(convert_state_dict(tv.state_dict()).model, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        t = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        t3 = tv.layer3(tv.layer2(tv.layer1(t)))
        t4 = tv.layer4(t3)
        out = ours(x)
    assert out["res5"].shape[-2:] == (8, 8)
    torch.testing.assert_close(out["res4"], t3, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["res5"], t4, rtol=1e-4, atol=1e-4)
