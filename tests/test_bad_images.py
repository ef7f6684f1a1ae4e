"""Hostile image files: the detection (Mask R-CNN) training loader skips and counts unreadable
images (into ``data/skipped_images`` of the training log) instead of crashing, and 16-bit PNGs
are scaled to 8 bits, not clipped at 255."""
import io
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

import ssprl_d2  # noqa: F401
from ssprl_d2.data.image_io import num_skipped_images, read_image_array, read_rgb_tensor
from ssprl_d2.engine.hooks import SkippedImagesLogger
from ssprl_d2.engine import build_trainer

from detection_utils import tiny_detection_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_16bit_png_is_scaled_to_8_bits(tmp_path):
    ramp = (np.arange(12 * 16, dtype=np.int64).reshape(12, 16) * 341).astype(np.uint16)
    path = str(tmp_path / "gray16.png")
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")  # really a 16-bit file
    expected = (ramp >> 8).astype(np.uint8)  # 0 .. 254: most values clip at 255 without scaling
    rgb = read_image_array(path, format="RGB")
    assert rgb.dtype == np.uint8 and rgb.shape == (12, 16, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], expected)
    np.testing.assert_array_equal(read_image_array(path, format="L")[..., 0], expected)
    np.testing.assert_array_equal(read_rgb_tensor(path).permute(1, 2, 0).numpy(), rgb)


def _hostile_coco(tmp_path):
    """Three good 64x64 JPEGs, a zero-byte and a truncated one, each with one polygon box."""
    img_dir = tmp_path / "img"
    img_dir.mkdir()
    rng = np.random.default_rng(0)
    good = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good, "JPEG")
    payloads = {f"good{i}.jpg": good.getvalue() for i in range(3)}
    payloads["zero.jpg"] = b""
    payloads["truncated.jpg"] = good.getvalue()[:300]
    images, anns = [], []
    for i, (name, data) in enumerate(payloads.items()):
        (img_dir / name).write_bytes(data)
        images.append({"id": i + 1, "file_name": name, "height": 64, "width": 64})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [4, 4, 20, 20],
                     "area": 400.0, "iscrowd": 0, "segmentation": [[4, 4, 24, 4, 24, 24, 4, 24]]})
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    return str(path), str(img_dir)


def test_detection_training_skips_and_logs_unreadable_images(tmp_path, caplog):
    json_file, root = _hostile_coco(tmp_path)
    name = "test_bad_images_detection"
    # 3 iterations x 2 images = 6 sampler indices: every one of the 5 files is read.
    cfg = tiny_detection_cfg(json_file, root, name, tmp_path / "out", num_classes=1, max_iter=3,
                             extra=["SOLVER.CHECKPOINT_PERIOD", "100"])
    trainer = build_trainer(cfg)
    assert any(isinstance(h, SkippedImagesLogger) for h in trainer._hooks)
    trainer.resume_or_load(resume=False)
    before = num_skipped_images()
    project_logger = logging.getLogger("ssprl_d2")  # set up not to propagate to the root
    project_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="ssprl_d2.data.image_io"):
            trainer.train()
    finally:
        project_logger.removeHandler(caplog.handler)
    skipped = num_skipped_images() - before
    # One record can reach caplog twice (the project logger's handler and the root's).
    records = {id(r): r for r in caplog.records if "Skipping unreadable" in r.getMessage()}
    warnings = [r.getMessage() for r in records.values()]
    assert any("zero.jpg" in w for w in warnings) and any("truncated.jpg" in w for w in warnings)
    assert skipped == len(warnings) >= 2  # MapDataset may draw a bad file again when retrying
    assert trainer.storage.history("data/skipped_images").latest() >= skipped
    assert np.isfinite(trainer.storage.history("total_loss").latest())
