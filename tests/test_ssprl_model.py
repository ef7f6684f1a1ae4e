import logging

import pytest
import torch
from pretrain_utils import TINY_CONFIG, config_path
from detectron2.config import get_cfg
from detectron2.utils.events import EventStorage

from ssprl_d2.config import add_ssprl_config, validate_config
from ssprl_d2.data.pyramid_mapper import PyramidDatasetMapper
from ssprl_d2.modeling.ssprl import SSPRL


def tiny_cfg(extra=()):
    cfg = get_cfg()
    add_ssprl_config(cfg)
    cfg.merge_from_file(TINY_CONFIG)
    cfg.merge_from_list(["MODEL.SSPRL.FREEZE_PROTOTYPES_ITERS", "0", *extra])
    return cfg


def batch(cfg, n=4, seed=0):
    mapper = PyramidDatasetMapper(cfg)
    g = torch.Generator().manual_seed(seed)
    return [
        mapper.map_image(torch.randint(0, 256, (3, 64, 72), dtype=torch.uint8, generator=g), g)
        for _ in range(n)
    ]


def test_forward_backward_named_terms():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = SSPRL(cfg)
    with EventStorage(0):
        losses = model(batch(cfg))
    assert set(losses) == {"loss_pyr_s0", "loss_pyr_s1", "loss_pyr_s2",
                           "loss_cross_s1", "loss_cross_s2"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.stem.conv1.weight.grad is not None
    assert model.cross_learners[0].weight.grad is not None


@pytest.mark.parametrize(
    "extra,expected",
    [
        (["MODEL.SSPRL.CROSS_WEIGHT", "0.0"],
         {"loss_pyr_s0", "loss_pyr_s1", "loss_pyr_s2"}),
        (["MODEL.SSPRL.USE_CROSS_LOSS", "False"],
         {"loss_pyr_s0", "loss_pyr_s1", "loss_pyr_s2"}),
        (["MODEL.SSPRL.USE_PYRAMID_LOSS", "False"],
         {"loss_pyr_s0", "loss_cross_s1", "loss_cross_s2"}),
        (["INPUT.SSPRL.GRIDS", "[]", "INPUT.SSPRL.PYRAMID_RESIZE", "[]",
          "INPUT.SSPRL.PATCH_SIZES", "[]", "INPUT.SSPRL.PYRAMID_SCALES", "[]",
          "MODEL.SSPRL.NUM_PROTOTYPES", "[8]", "MODEL.SSPRL.ALPHA", "[1.0]",
          "MODEL.SSPRL.BETA", "[]", "MODEL.SSPRL.QUEUE.LENGTHS", "[0]"],
         {"loss_pyr_s0"}),
        (["MODEL.SSPRL.SHARED_PROTOTYPES", "True", "MODEL.SSPRL.NUM_PROTOTYPES", "[8, 8, 8]"],
         {"loss_pyr_s0", "loss_pyr_s1", "loss_pyr_s2", "loss_cross_s1", "loss_cross_s2"}),
        (["MODEL.SSPRL.CROSS_INPUT", "probs"],
         {"loss_pyr_s0", "loss_pyr_s1", "loss_pyr_s2", "loss_cross_s1", "loss_cross_s2"}),
        (["MODEL.SSPRL.CROSS_INPUT", "probs", "MODEL.SSPRL.CROSS_NORMALIZE_INPUT", "True"],
         {"loss_pyr_s0", "loss_pyr_s1", "loss_pyr_s2", "loss_cross_s1", "loss_cross_s2"}),
    ],
)
def test_ablation_switches(extra, expected):
    torch.manual_seed(0)
    cfg = tiny_cfg(extra)
    validate_config(cfg)
    model = SSPRL(cfg)
    with EventStorage(0):
        losses = model(batch(cfg))
    assert set(losses) == expected
    if "SHARED_PROTOTYPES" in extra:
        assert len(model.prototypes) == 1


def test_ablation_switch_changes_only_its_term():
    torch.manual_seed(0)
    full_model = SSPRL(tiny_cfg())
    torch.manual_seed(0)
    pyr_only = SSPRL(tiny_cfg(["MODEL.SSPRL.USE_CROSS_LOSS", "False"]))
    pyr_only.load_state_dict(full_model.state_dict(), strict=False)
    data = batch(tiny_cfg())
    with EventStorage(0):
        a = full_model(data)
        b = pyr_only(data)
    for k, v in b.items():
        torch.testing.assert_close(v, a[k])


def test_prototypes_unit_norm_and_frozen_without_grad():
    cfg = tiny_cfg(["MODEL.SSPRL.FREEZE_PROTOTYPES_ITERS", "5"])
    model = SSPRL(cfg)
    with torch.no_grad():
        model.prototypes[0].weight.mul_(3.0)
    with EventStorage(2):
        losses = model(batch(cfg))
    torch.testing.assert_close(model.prototypes[0].weight.norm(dim=1), torch.ones(8))
    sum(losses.values()).backward()
    assert model.prototypes[0].weight.grad is None
    assert model.cross_learners[0].weight.grad is None
    assert model.heads[0][0].weight.grad is not None


def test_queue_fills_then_is_used():
    cfg = tiny_cfg(["MODEL.SSPRL.QUEUE.LENGTHS", "[8, 16, 36]",
                    "MODEL.SSPRL.QUEUE.START_ITER", "1"])
    model = SSPRL(cfg)
    assert [q.length for q in model.queues] == [8, 16, 36]
    data = batch(cfg)
    with EventStorage(0):
        model(data)
    assert int(model.queues[0].num_filled) == 0  # not started yet
    for it in (1, 2):
        with EventStorage(it):
            model(data)
    assert model.queues[0].is_full and model.queues[1].is_full and model.queues[2].is_full
    assert "queues.0.features" in model.state_dict()


def test_non_finite_loss_names_term_and_iteration():
    cfg = tiny_cfg()
    model = SSPRL(cfg)
    with torch.no_grad():
        model.heads[1][-1].weight.fill_(float("nan"))
    with EventStorage(7), pytest.raises(FloatingPointError, match=r"loss_pyr_s1.*iteration 7"):
        model(batch(cfg))


@pytest.mark.parametrize(
    "extra,match",
    [
        (["INPUT.SSPRL.PATCH_SIZES", "[20, 16]"], "PATCH_SIZES.*larger than its grid cell"),
        (["INPUT.SSPRL.PYRAMID_RESIZE", "[33, 48]"], "not divisible"),
        (["MODEL.SSPRL.NUM_PROTOTYPES", "[8, 6]"], "NUM_PROTOTYPES"),
        (["MODEL.SSPRL.ALPHA", "[1.0, 0.25]"], "ALPHA"),
        (["MODEL.SSPRL.BETA", "[0.25]"], "BETA"),
        (["MODEL.SSPRL.ASSIGN_CROPS", "[0, 9]"], "ASSIGN_CROPS"),
        (["MODEL.SSPRL.CROSS_INPUT", "logits"], "CROSS_INPUT"),
        (["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.PRECISION", "float16"],
         "SOLVER.AMP.PRECISION 'float16' is not supported on a CPU MODEL.DEVICE"),
        (["SOLVER.AMP.ENABLED", "True", "MODEL.DEVICE", "mps"],
         "SOLVER.AMP.ENABLED needs CUDA or a CPU MODEL.DEVICE"),
        (["INPUT.SSPRL.LOADER_KERNEL", "cuda"], "INPUT.SSPRL.LOADER_KERNEL"),
        (["MODEL.SSPRL.COMPILE", "True", "MODEL.SSPRL.COMPILE_BACKEND", "inductr"],
         "COMPILE_BACKEND='inductr' is not a torch.compile backend"),
    ],
)
def test_invalid_configs_name_the_key(extra, match):
    with pytest.raises(ValueError, match=match):
        validate_config(tiny_cfg(extra))


def test_cpu_device_with_photometric_on_model_warns(caplog):
    """On a CPU device the model-side photometric runs in the training process: say so, and
    name the cheaper key. No warning with the loader setting, or with no colour op at all
    (the demo config, whose probabilities are 0)."""
    colour = ["INPUT.SSPRL.COLOR_JITTER_PROB", "0.8", "INPUT.SSPRL.BLUR_PROB", "0.5"]
    for opts, warns in [
        (["INPUT.SSPRL.PHOTOMETRIC_ON", "model", *colour], True),
        (["INPUT.SSPRL.PHOTOMETRIC_ON", "loader", *colour], False),
        (["INPUT.SSPRL.PHOTOMETRIC_ON", "model"], False),
    ]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ssprl_d2.engine.setup"):
            validate_config(tiny_cfg(opts))
        assert ("INPUT.SSPRL.PHOTOMETRIC_ON loader" in caplog.text) == warns, opts


def test_compiled_backbone_matches_eager_and_keeps_checkpoint_keys():
    """MODEL.SSPRL.COMPILE: the same losses and gradients as the plain model, and the same
    state-dict keys (checkpoints and the converter are unaffected). The aot_eager backend runs
    the compile machinery (graph capture, AOT autograd) without a C++ compiler."""
    cfg = tiny_cfg()
    compiled_cfg = tiny_cfg(["MODEL.SSPRL.COMPILE", "True", "MODEL.SSPRL.COMPILE_BACKEND",
                             "aot_eager"])
    validate_config(compiled_cfg)
    torch.manual_seed(0)
    plain = SSPRL(cfg)
    torch.manual_seed(0)
    compiled = SSPRL(compiled_cfg)
    assert list(compiled.state_dict()) == list(plain.state_dict())
    assert compiled.backbone._compiled_call_impl is not None
    assert plain.backbone._compiled_call_impl is None
    data = batch(cfg)
    results = []
    for model in (plain, compiled):
        with EventStorage(0):
            losses = model(data)
        sum(losses.values()).backward()
        results.append((losses, model.backbone.stem.conv1.weight.grad.clone()))
    (l0, g0), (l1, g1) = results
    for k in l0:
        torch.testing.assert_close(l1[k], l0[k], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g1, g0, rtol=1e-3, atol=1e-5)


def test_queue_length_rounding_is_logged(caplog):
    cfg = tiny_cfg(["MODEL.SSPRL.QUEUE.LENGTHS", "[10, 16, 40]"])
    model = SSPRL(cfg)
    assert [q.length for q in model.queues] == [8, 16, 36]
    assert "rounded down to 8" in caplog.text


def test_paper_config_builds_and_runs_on_cpu():
    cfg = get_cfg()
    add_ssprl_config(cfg)
    cfg.merge_from_file(config_path("configs/ssprl_pretrain.yaml"))
    cfg.MODEL.RESNETS.NORM = "BN"
    validate_config(cfg)
    model = SSPRL(cfg)
    assert [p.weight.shape[0] for p in model.prototypes] == [300, 150, 150]
    data = batch(cfg, n=2)
    with EventStorage(0):
        losses = model(data)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())


def test_embed_views_and_prototype_vectors_match_the_model():
    """The public accessors the visualisation uses: unit projections of raw views through the
    backbone and the scale's head, and the scale's unit prototypes (shared set when shared)."""
    torch.manual_seed(0)
    model = SSPRL(tiny_cfg()).eval()
    views = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    for scale in range(3):
        z = model.embed_views(views, scale)
        assert z.shape == (5, 16) and z.dtype == torch.float32
        torch.testing.assert_close(z.norm(dim=1), torch.ones(5))
        x = (views.float() - model.pixel_mean) / model.pixel_std
        pooled = model.backbone(x)["res5"].mean(dim=(2, 3))
        torch.testing.assert_close(z, torch.nn.functional.normalize(model.heads[scale](pooled)))
        protos = model.prototype_vectors(scale)
        torch.testing.assert_close(z @ protos.T, model.prototypes[scale](z))
    shared = SSPRL(tiny_cfg(["MODEL.SSPRL.SHARED_PROTOTYPES", "True",
                             "MODEL.SSPRL.NUM_PROTOTYPES", "[8, 8, 8]"]))
    assert torch.equal(shared.prototype_vectors(2), shared.prototype_vectors(0))


def test_pyramid_batch_layout():
    from ssprl_d2.modeling.pyramid_batch import backbone_passes, stack_units

    def image(k):
        return {
            "crops": [torch.full((3, 8, 8), k), torch.full((3, 8, 8), k + 1),
                      torch.full((3, 4, 4), k + 2)],
            "patches": [torch.full((2, 4, 3, 4, 4), k)],  # one pyramid scale, g = 2
            "photometric": torch.arange(3 + 2 * 4).float().view(-1, 1) + 100 * k,
        }

    units, params = stack_units([image(0), image(10)], num_crops=3, grids=[2])
    shapes = [tuple(u.shape) for u in units]
    assert shapes == [(2, 3, 8, 8)] * 2 + [(2, 3, 4, 4)] + [(8, 3, 4, 4)] * 2
    assert units[1][1, 0, 0, 0] == 11  # crop 1 of image 1
    assert params[3][:, 0].tolist() == [3, 4, 5, 6, 1003, 1004, 1005, 1006]  # view 0, image-major
    assert params[4][:, 0].tolist() == [7, 8, 9, 10, 1007, 1008, 1009, 1010]  # view 1
    assert backbone_passes(units, "resolution") == [[0, 1], [2, 3, 4]]
    assert backbone_passes(units, "none") == [[0], [1], [2], [3], [4]]
    units, params = stack_units([{k: v for k, v in image(0).items() if k != "photometric"}], 3, [2])
    assert params is None and len(units) == 5
