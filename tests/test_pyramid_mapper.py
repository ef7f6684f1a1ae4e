import torch
from pretrain_utils import config_path
from detectron2.config import get_cfg

from ssprl_d2.config import add_ssprl_config
from ssprl_d2.ops import NUM_PARAMS
from ssprl_d2.data.crop_geometry import sample_resized_crop_box
from ssprl_d2.data.pyramid_mapper import PyramidDatasetMapper


def _cfg(**overrides):
    cfg = get_cfg()
    add_ssprl_config(cfg)
    cfg.merge_from_file(config_path("configs/ssprl_pretrain.yaml"))
    for k, v in overrides.items():
        node = cfg
        *path, last = k.split(".")
        for p in path:
            node = getattr(node, p)
        setattr(node, last, v)
    return cfg


def test_paper_setting_shapes_and_dtypes():
    mapper = PyramidDatasetMapper(_cfg())
    image = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    out = mapper.map_image(image, torch.Generator().manual_seed(0))
    sizes = [tuple(c.shape) for c in out["crops"]]
    assert sizes == [(3, 224, 224)] * 2 + [(3, 96, 96)] * 6
    assert all(c.dtype == torch.uint8 for c in out["crops"])
    assert tuple(out["patches"][0].shape) == (2, 4, 3, 112, 112)
    assert tuple(out["patches"][1].shape) == (2, 9, 3, 96, 96)
    assert out["patches"][0].dtype == torch.uint8
    assert tuple(out["photometric"].shape) == (8 + 8 + 18, NUM_PARAMS)
    assert mapper.num_outputs == 34


def test_determinism_under_seed():
    mapper = PyramidDatasetMapper(_cfg())
    image = torch.randint(0, 256, (3, 200, 260), dtype=torch.uint8)
    a = mapper.map_image(image, torch.Generator().manual_seed(3))
    b = mapper.map_image(image, torch.Generator().manual_seed(3))
    c = mapper.map_image(image, torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(a["crops"], b["crops"]))
    assert all(torch.equal(x, y) for x, y in zip(a["patches"], b["patches"]))
    assert torch.equal(a["photometric"], b["photometric"])
    assert not torch.equal(a["patches"][1], c["patches"][1])


def _cell_image(grid, size):
    """Square image whose grid cells have distinct, constant colours."""
    img = torch.zeros(3, size, size, dtype=torch.uint8)
    cell = size // grid
    for r in range(grid):
        for c in range(grid):
            colour = torch.tensor([40 + 60 * r, 40 + 60 * c, 200 - 20 * (r + c)], dtype=torch.uint8)
            img[:, r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = colour.view(3, 1, 1)
    return img


def test_patch_correspondence_between_views():
    for shared in (True, False):
        cfg = _cfg(
            **{
                "INPUT.SSPRL.SHARED_PYRAMID_CROP": shared,
                "INPUT.SSPRL.PYRAMID_SCALES": [[1.0, 1.0], [1.0, 1.0]],
                "INPUT.SSPRL.RATIO": [1.0, 1.0],
                "INPUT.SSPRL.FLIP_PROB": 0.0,
            }
        )
        mapper = PyramidDatasetMapper(cfg)
        for grid_idx, grid in enumerate((2, 3)):
            image = _cell_image(grid, 381 if grid == 3 else 314)
            out = mapper.map_image(image, torch.Generator().manual_seed(grid))
            views = out["patches"][grid_idx].float()  # (2, M, 3, p, p)
            mean_colour = views.mean(dim=(-1, -2))  # (2, M, 3)
            torch.testing.assert_close(mean_colour[0], mean_colour[1], atol=2.0, rtol=0)
            # All cells are present exactly once (shuffled identically).
            assert len({tuple(c.round().tolist()) for c in mean_colour[0]}) == grid * grid


def test_resized_crop_box_distribution():
    g = torch.Generator().manual_seed(0)
    areas, ratios = [], []
    for _ in range(2000):
        top, left, h, w = sample_resized_crop_box(200, 300, (0.14, 1.0), (3 / 4, 4 / 3), g)
        assert 0 <= top and top + h <= 200 and 0 <= left and left + w <= 300
        areas.append(h * w / (200 * 300))
        ratios.append(w / h)
    areas = torch.tensor(areas)
    assert areas.min() >= 0.13 and areas.max() <= 1.0
    assert min(ratios) > 0.7 and max(ratios) < 1.4
    # Same distribution as torchvision's RandomResizedCrop (the reference recipe).
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(1)
    ref = torch.tensor(
        [
            h * w / (200 * 300)
            for _, _, h, w in (
                RandomResizedCrop.get_params(torch.zeros(1, 200, 300), [0.14, 1.0], [3 / 4, 4 / 3])
                for _ in range(2000)
            )
        ]
    )
    assert abs(float(areas.mean() - ref.mean())) < 0.02
    assert abs(float(areas.std() - ref.std())) < 0.02


def test_read_rgb_tensor_matches_detectron2_read_image(tmp_path):
    """The torchvision JPEG path and the PIL fallback give read_image's pixels (EXIF
    orientation, grayscale, PNG), HWC-backed; an unreadable file gives None."""
    import numpy as np
    from detectron2.data.detection_utils import read_image
    from PIL import Image

    from ssprl_d2.data.image_io import read_rgb_tensor

    yy, xx = np.mgrid[0:40, 0:56]
    arr = np.stack([yy * 6, xx * 4, (yy + xx) * 2], axis=-1).astype(np.uint8)
    img = Image.fromarray(arr)
    img.save(tmp_path / "rgb.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    img.save(tmp_path / "rotated.jpg", quality=90, exif=exif)
    img.convert("L").save(tmp_path / "gray.jpg", quality=90)
    img.save(tmp_path / "rgb.png")
    for name in ("rgb.jpg", "rotated.jpg", "gray.jpg", "rgb.png"):
        path = str(tmp_path / name)
        out = read_rgb_tensor(path)
        assert out.dtype == torch.uint8 and out.shape[0] == 3
        assert out.permute(1, 2, 0).is_contiguous()
        assert torch.equal(out.permute(1, 2, 0), torch.from_numpy(read_image(path, "RGB"))), name
    assert read_rgb_tensor(str(tmp_path / "rotated.jpg")).shape[1:] == (56, 40)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg" * 10)
    assert read_rgb_tensor(str(tmp_path / "bad.jpg")) is None
