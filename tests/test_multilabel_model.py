"""MultiLabelClassifier: frozen backbone in linear mode, fine-tuning, optimizer groups, weight
loading through DetectionCheckpointer and the start-up checks."""
import copy
import os
import pickle

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from ssprl_d2.config import add_ssprl_config, validate_config
from ssprl_d2.engine.preflight import check_classifier_inputs
from ssprl_d2.engine import ClassificationTrainer
from ssprl_d2.modeling.classifier import MultiLabelClassifier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 5


def validate_classifier_config(cfg):
    """The classifier's start-up checks: its keys, then its weights and datasets."""
    validate_config(cfg)
    check_classifier_inputs(cfg)


def tiny_cfg(mode="linear", num_classes=NUM_CLASSES):
    cfg = get_cfg()
    add_ssprl_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs/classification/Base-Classification.yaml"))
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.CLASSIFIER.MODE = mode
    cfg.MODEL.CLASSIFIER.NUM_CLASSES = num_classes
    cfg.SOLVER.BASE_LR = 0.1
    cfg.SOLVER.MAX_ITER = 3
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    return cfg


def batch(n=4, size=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, NUM_CLASSES, generator=g) < 0.5).float()
    labels[0, 0] = -1  # an ignored entry
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    return [{"image": im, "labels": lab} for im, lab in zip(images, labels)]


def train_steps(model, optimizer, steps=3):
    model.train()
    with EventStorage():
        for i in range(steps):
            losses = model(batch(seed=i))
            assert set(losses) == {"loss_cls"} and torch.isfinite(losses["loss_cls"])
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()


def test_linear_mode_keeps_backbone_bit_identical():
    torch.manual_seed(0)
    cfg = tiny_cfg("linear")
    model = build_model(cfg)
    assert isinstance(model, MultiLabelClassifier)
    backbone_before = copy.deepcopy(model.backbone.state_dict())  # params and BN buffers
    head_before = model.head.weight.detach().clone()
    optimizer = ClassificationTrainer.build_optimizer(cfg, model)
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert optimized == {id(model.head.weight), id(model.head.bias)}
    train_steps(model, optimizer)
    assert model.training and not model.backbone.training
    assert all(not m.training for m in model.backbone.modules())
    after = model.backbone.state_dict()
    for k, v in backbone_before.items():
        assert torch.equal(v, after[k]), k
    assert not torch.equal(head_before, model.head.weight)


def test_finetune_mode_trains_backbone_with_its_own_lr():
    torch.manual_seed(0)
    cfg = tiny_cfg("finetune")
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.backbone.named_parameters()}
    optimizer = ClassificationTrainer.build_optimizer(cfg, model)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            expected = 0.1 * 0.01 if names[id(p)].startswith("backbone.") else 0.1
            assert group["lr"] == pytest.approx(expected), names[id(p)]
    train_steps(model, optimizer)
    changed = [k for k, v in model.backbone.named_parameters() if not torch.equal(v, before[k])]
    assert len(changed) == len(before)
    assert model.backbone.training


def test_inference_scores_and_mixed_sizes():
    torch.manual_seed(0)
    model = build_model(tiny_cfg("linear")).eval()
    inputs = batch(3, size=48)
    inputs[1] = {"image": torch.randint(0, 256, (3, 64, 40), dtype=torch.uint8)}
    with torch.no_grad():
        out = model(inputs)
        single = model([inputs[1]])
    assert len(out) == 3 and out[0]["scores"].shape == (NUM_CLASSES,)
    assert ((out[0]["scores"] > 0) & (out[0]["scores"] < 1)).all()
    torch.testing.assert_close(out[1]["scores"], single[0]["scores"])


def _backbone_numpy(model):
    state = model.state_dict()
    return {k[len("backbone.") :]: v.numpy() for k, v in state.items() if k.startswith("backbone.")}


def test_loads_converted_pkl_into_backbone(tmp_path):
    torch.manual_seed(1)
    source = build_model(tiny_cfg())
    path = tmp_path / "converted.pkl"
    with open(path, "wb") as f:
        converted = {"model": _backbone_numpy(source), "__author__": "test"}
        pickle.dump(dict(converted, matching_heuristics=True), f)
    torch.manual_seed(2)
    target = build_model(tiny_cfg())
    head = target.head.weight.detach().clone()
    DetectionCheckpointer(target).load(str(path))
    for k, v in source.backbone.state_dict().items():
        assert torch.equal(v, target.backbone.state_dict()[k]), k
    assert torch.equal(head, target.head.weight)


def test_loads_pretraining_checkpoint_ignoring_other_heads(tmp_path):
    torch.manual_seed(1)
    source = build_model(tiny_cfg())
    state = {f"backbone.{k}": v for k, v in source.backbone.state_dict().items()}
    state["heads.0.0.weight"] = torch.randn(16, 512)
    state["prototypes.0.weight"] = torch.randn(30, 16)
    path = tmp_path / "model_0000099.pth"
    torch.save({"model": state, "iteration": 99}, path)
    cfg = tiny_cfg()
    cfg.MODEL.WEIGHTS = str(path)
    validate_classifier_config(cfg)  # no head inside: fine
    torch.manual_seed(2)
    target = build_model(cfg)
    DetectionCheckpointer(target).load(str(path))
    for k, v in source.backbone.state_dict().items():
        assert torch.equal(v, target.backbone.state_dict()[k]), k


def test_head_with_other_class_count_is_a_clear_error(tmp_path):
    state = build_model(tiny_cfg(num_classes=3)).state_dict()
    path = tmp_path / "voc_like.pth"
    torch.save({"model": state}, path)
    cfg = tiny_cfg(num_classes=NUM_CLASSES)
    cfg.MODEL.WEIGHTS = str(path)
    with pytest.raises(ValueError, match="head.weight.*3 classes.*NUM_CLASSES is 5"):
        validate_classifier_config(cfg)
    cfg.MODEL.CLASSIFIER.NUM_CLASSES = 3
    validate_classifier_config(cfg)


def test_startup_checks():
    cfg = tiny_cfg()
    cfg.MODEL.WEIGHTS = "/nonexistent/ssprl_r50.pkl"
    with pytest.raises(FileNotFoundError, match="ssprl_r50.pkl"):
        validate_classifier_config(cfg)
    cfg = tiny_cfg()
    cfg.MODEL.CLASSIFIER.MODE = "frozen"
    with pytest.raises(ValueError, match="MODE"):
        validate_classifier_config(cfg)
    name = "test_multilabel_model_meta"
    MetadataCatalog.get(name).set(thing_classes=["a", "b", "c"])
    cfg = tiny_cfg()
    cfg.DATASETS.TEST = (name,)
    with pytest.raises(ValueError, match="3 classes but MODEL.CLASSIFIER.NUM_CLASSES is 5"):
        validate_classifier_config(cfg)
