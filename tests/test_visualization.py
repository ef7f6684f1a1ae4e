"""Prototype figures: deterministic views, assignments, and PNGs of the requested size from a
tiny checkpoint saved with the real Detectron2 checkpointer."""
import json
import os

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng
from PIL import Image

from ssprl_d2.engine.setup import load_ssprl_checkpoint
from ssprl_d2.visualization import (
    ScaleEmbedding,
    compute_prototype_embeddings,
    cross_scale_correspondence,
    plot_prototype_tsne,
    save_figure,
)
from ssprl_d2.visualization.views import center_square, grid_patches

from pretrain_utils import tiny_pretrain_cfg, write_image_folder
from tool_utils import load_tool


def test_views_are_deterministic_center_crops():
    img = torch.arange(3 * 40 * 60, dtype=torch.int64).remainder(256).to(torch.uint8)
    img = img.view(3, 40, 60)
    sq = center_square(img)
    assert sq.shape == (3, 40, 40)
    assert torch.equal(sq, img[:, :, 10:50])
    patches = grid_patches(img, grid=2, resize=40, patch=16)  # no resampling at 40 px
    assert patches.shape == (4, 3, 16, 16)
    # Cell (1, 0) spans rows 20-39, cols 0-19 of the square; its center 16 px start at (22, 2).
    assert torch.equal(patches[2], sq[:, 22:38, 2:18])
    assert torch.equal(grid_patches(img, 2, 40, 16), patches)


def test_correspondence_counts_patches_of_the_chosen_images():
    k0, k1 = 3, 5
    scores0 = np.eye(k0)[[0, 0, 1, 2]]  # images 0, 1 -> prototype 0; 2 -> 1; 3 -> 2
    emb0 = ScaleEmbedding(0, 1, np.eye(k0), scores0, np.arange(4), np.zeros(4, int),
                          np.zeros((4, 8, 8, 3), np.uint8))
    # 4 patches per image; images 0 and 1: prototypes [4, 4, 1, 4] and [1, 4, 2, 2].
    assign = [4, 4, 1, 4, 1, 4, 2, 2, 0, 0, 0, 0, 3, 3, 3, 3]
    emb1 = ScaleEmbedding(1, 2, np.eye(k1), np.eye(k1)[assign], np.repeat(np.arange(4), 4),
                          np.tile(np.arange(4), 4), np.zeros((16, 8, 8, 3), np.uint8))
    corr = cross_scale_correspondence(emb0, emb1, top_k=2)
    assert corr["image_prototype"] == 0 and corr["images"] == [0, 1]
    assert corr["patch_prototypes"] == [(4, 4), (1, 2)] and corr["num_patches"] == 8
    assert cross_scale_correspondence(emb0, emb1, image_prototype=2)["patch_prototypes"][0] == (
        3, 4)
    fig = plot_prototype_tsne(emb1, num_prototypes=3, per_prototype=2, size=200)
    assert fig.get_size_inches() * fig.dpi == pytest.approx([200, 200])


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A tiny SS-PRL model (tests/pretrain_utils.py sizes) saved with config.yaml beside it."""
    root = tmp_path_factory.mktemp("vis")
    folder = write_image_folder(str(root / "imgs"), n=6)
    out = str(root / "run")
    cfg = tiny_pretrain_cfg(folder, out, name="vis_tiny_imgs")
    seed_all_rng(0)
    model = build_model(cfg)
    os.makedirs(out)
    DetectionCheckpointer(model, save_dir=out).save("model_final")
    with open(os.path.join(out, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    return os.path.join(out, "model_final.pth"), cfg


def test_embeddings_match_the_model(tiny_checkpoint):
    path, cfg = tiny_checkpoint
    model, loaded_cfg = load_ssprl_checkpoint(path)
    assert not model.training and loaded_cfg.MODEL.SSPRL.NUM_PROTOTYPES == [8, 6, 6]
    images = [torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8) for _ in range(3)]
    inp = cfg.INPUT.SSPRL
    embs = compute_prototype_embeddings(model, images, inp.CROP_SIZES[0], inp.GRIDS,
                                        inp.PYRAMID_RESIZE, inp.PATCH_SIZES, thumb_size=20)
    assert sorted(embs) == [0, 1, 2]
    assert embs[0].scores.shape == (3, 8) and embs[2].scores.shape == (27, 6)
    assert embs[2].thumbnails.shape == (27, 20, 20, 3)
    assert list(embs[2].image_index[:10]) == [0] * 9 + [1]
    assert embs[1].usage().sum() == 12
    # Scores are z^T c of unit vectors: the same as the model's own head + prototypes.
    x = grid_patches(images[1], inp.GRIDS[1], inp.PYRAMID_RESIZE[1], inp.PATCH_SIZES[1])
    with torch.no_grad():
        xn = (x.float() - model.pixel_mean) / model.pixel_std
        f = model.backbone(xn)[model.in_feature].mean(dim=(2, 3))
        z = torch.nn.functional.normalize(model.heads[2](f), dim=1)
        expected = z @ torch.nn.functional.normalize(model.prototypes[2].weight, dim=1).t()
    np.testing.assert_allclose(embs[2].scores[9:18], expected.numpy(), rtol=1e-4, atol=1e-5)
    assert np.abs(embs[2].scores).max() <= 1.0 + 1e-5


def test_cli_writes_pngs_of_the_requested_size(tiny_checkpoint, tmp_path):
    path, cfg = tiny_checkpoint
    tool = load_tool("tools/visualize_prototypes.py")
    out = tmp_path / "figs"
    summary = tool.main(["--checkpoint", path, "--dataset", "vis_tiny_imgs", "--output-dir",
                         str(out), "--size", "360", "--per-prototype", "2", "--num-prototypes",
                         "3"])
    names = sorted(os.path.basename(p) for p in summary["files"])
    assert names == ["cross_scale_prototypes.png", "prototypes_tsne_scale0.png",
                     "prototypes_tsne_scale2.png"]
    n_images = len(DatasetCatalog.get("vis_tiny_imgs"))
    for p in summary["files"]:
        assert os.path.getsize(p) > 2000
        with Image.open(p) as im:
            assert im.size == (360, 360)
            pixels = np.asarray(im.convert("RGB"))
        assert pixels.std() > 5  # not a blank canvas
    saved = json.load(open(out / "prototypes_summary.json"))
    assert sum(saved["usage"]["0"]) == n_images and sum(saved["usage"]["2"]) == 9 * n_images
    assert saved["cross_scale"]["image_prototype"] in range(8)


def test_global_only_model_gets_no_cross_scale_figure(tmp_path):
    from ssprl_d2.visualization import visualize_prototypes

    folder = write_image_folder(str(tmp_path / "imgs"), n=4)
    out = str(tmp_path / "run")
    cfg = tiny_pretrain_cfg(folder, out, name="vis_global_imgs", extra=[
        "INPUT.SSPRL.GRIDS", "[]", "INPUT.SSPRL.PYRAMID_RESIZE", "[]",
        "INPUT.SSPRL.PYRAMID_SCALES", "[]", "INPUT.SSPRL.PATCH_SIZES", "[]",
        "MODEL.SSPRL.NUM_PROTOTYPES", "[8]", "MODEL.SSPRL.ALPHA", "[1.0]",
        "MODEL.SSPRL.BETA", "[]", "MODEL.SSPRL.QUEUE.LENGTHS", "[8]"])
    model = build_model(cfg)
    os.makedirs(out)
    DetectionCheckpointer(model, save_dir=out).save("model_final")
    cfg_file = str(tmp_path / "global.yaml")
    with open(cfg_file, "w") as f:
        f.write(cfg.dump())
    model, cfg = load_ssprl_checkpoint(os.path.join(out, "model_final.pth"), cfg_file)
    summary = visualize_prototypes(model, cfg, "vis_global_imgs", str(tmp_path / "figs"), size=240)
    assert [os.path.basename(p) for p in summary["files"]] == ["prototypes_tsne_scale0.png"]
    assert "cross_scale" not in summary
    fig_path = save_figure(plot_prototype_tsne(ScaleEmbedding(
        0, 1, np.eye(3), np.eye(3), np.arange(3), np.zeros(3, int),
        np.zeros((3, 8, 8, 3), np.uint8)), size=150), str(tmp_path / "x" / "small.png"))
    with Image.open(fig_path) as im:
        assert im.size == (150, 150)
