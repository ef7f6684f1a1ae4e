#!/usr/bin/env python
"""Sweep of hostile image files through the decoders of the three jobs' loaders.

    PYTHONPATH=. python benchmarks/bad_images.py [--workers 4]

Cases: zero-byte, truncated and non-image files; CMYK JPEG and 16-bit PNG; palette+alpha,
grayscale and EXIF-rotated images; a PNG whose header claims 40000 x 40000 pixels (a
decompression bomb). Decoders: pre-training (``read_rgb_tensor``), classification
(``read_image_or_none``), detection (the Mask R-CNN train mapper, ``SafeDatasetMapper``).
Then a real pre-training loader with ``--workers`` workers over all cases plus good images
(the skip count summed over the workers), and one over broken files only (must stop).
Prints Markdown tables (the README's reliability section).
"""
import argparse
import os
import struct
import sys
import tempfile
import time
import zlib

import numpy as np
from PIL import Image

from ssprl_d2.data.build import build_pretrain_train_loader
from ssprl_d2.data.detection_mapper import SafeDatasetMapper
from ssprl_d2.data.image_io import num_skipped_images, read_image_or_none, read_rgb_tensor
from ssprl_d2.engine.setup import load_config

RGB = np.zeros((24, 32, 3), np.uint8)
RGB[:, :16] = (200, 30, 30)
RGB[:, 16:] = (30, 30, 200)


def _png_with_size(path, width, height):
    """A valid 1x1 PNG whose IHDR claims ``width`` x ``height``."""
    Image.new("RGB", (1, 1)).save(path)
    data = bytearray(open(path, "rb").read())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    open(path, "wb").write(bytes(data))


def make_cases(root):
    """Writes every case; returns {name: (path, expected HWC RGB array or None)}."""
    cases = {}
    p = os.path.join(root, "zero.jpg")
    open(p, "wb").close()
    cases["zero-byte"] = (p, None)
    good = os.path.join(root, "good.jpg")
    Image.fromarray(RGB).save(good, quality=95)
    p = os.path.join(root, "truncated.jpg")
    open(p, "wb").write(open(good, "rb").read()[:200])
    cases["truncated JPEG"] = (p, None)
    p = os.path.join(root, "text.jpg")
    open(p, "w").write("this is not an image\n")
    cases["non-image"] = (p, None)
    p = os.path.join(root, "cmyk.jpg")
    Image.fromarray(RGB).convert("CMYK").save(p, quality=95)
    cases["CMYK JPEG"] = (p, np.asarray(Image.open(p).convert("RGB")))
    p = os.path.join(root, "gray16.png")
    ramp = (np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 80).astype(np.uint16)
    Image.fromarray(ramp).save(p)
    cases["16-bit PNG"] = (p, np.repeat((ramp >> 8).astype(np.uint8)[..., None], 3, axis=2))
    p = os.path.join(root, "palette_alpha.png")
    Image.fromarray(RGB).convert("RGBA").convert("P").save(p, transparency=0)
    cases["palette + alpha PNG"] = (p, np.asarray(Image.open(p).convert("RGB")))
    p = os.path.join(root, "gray.jpg")
    Image.fromarray(RGB).convert("L").save(p, quality=95)
    cases["grayscale JPEG"] = (p, np.asarray(Image.open(p).convert("RGB")))
    p = os.path.join(root, "exif_rot.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    Image.fromarray(RGB).save(p, quality=95, exif=exif)
    cases["EXIF-rotated JPEG"] = (p, np.rot90(np.asarray(Image.open(p).convert("RGB")), -1))
    p = os.path.join(root, "bomb.png")
    _png_with_size(p, 40000, 40000)
    cases["decompression bomb (40000^2 PNG)"] = (p, None)
    return cases


def _outcome(array, expected):
    if array is None:
        return "skipped, counted" if expected is None else "skipped (should decode)"
    array = np.asarray(array)
    if expected is None:
        return f"decoded {array.shape} (should skip)"
    if array.shape != expected.shape:
        return f"wrong shape {array.shape}, expected {expected.shape}"
    err = np.abs(array.astype(int) - expected.astype(int)).max()
    return "decoded correctly" if err <= 3 else f"decoded, max error {err} (wrong pixels)"


def _detection_decoder():
    """The detection train mapper without augmentations: HWC RGB array, or None if skipped."""
    mapper = SafeDatasetMapper(is_train=True, augmentations=[], image_format="RGB")

    def decode(path):
        out = mapper({"file_name": path, "annotations": []})
        return None if out is None else out["image"].permute(1, 2, 0).numpy()

    return decode


def decoder_table(cases):
    decoders = {
        "pre-training": lambda p: (
            None if (t := read_rgb_tensor(p)) is None else t.permute(1, 2, 0).numpy()
        ),
        "classification": lambda p: read_image_or_none(p, format="RGB"),
        "detection": _detection_decoder(),
    }
    rows = ["| case | " + " | ".join(decoders) + " |", "|---" * (len(decoders) + 1) + "|"]
    for name, (path, expected) in cases.items():
        cells = []
        for fn in decoders.values():
            try:
                cells.append(_outcome(fn(path), expected))
            except Exception as e:  # a crash of the loader worker
                cells.append(f"**crash** ({type(e).__name__})")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as root:
        cases = make_cases(root)
        before = num_skipped_images()
        print(decoder_table(cases))
        print(f"\nskipped images counted in this process: {num_skipped_images() - before}")
        sys.stdout.flush()
        _loader_checks(root, cases, args.workers)


def _loader_checks(root, cases, workers):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    mixed = os.path.join(root, "mixed")
    os.makedirs(mixed)
    for i, (path, _) in enumerate(cases.values()):
        os.link(path, os.path.join(mixed, f"case{i}_{os.path.basename(path)}"))
    for i in range(24):
        Image.fromarray(np.roll(RGB, i, axis=1)).save(os.path.join(mixed, f"ok_{i}.jpg"))
    broken = os.path.join(root, "broken")
    os.makedirs(broken)
    for i in range(12):
        open(os.path.join(broken, f"b{i}.jpg"), "wb").write(b"\xff\xd8\xff garbage")
    for name, folder in (("mixed", mixed), ("broken", broken)):
        cfg = load_config(
            os.path.join(repo, "configs/ssprl_demo.yaml"),
            [
                "DATASETS.SSPRL.IMAGE_FOLDERS", f"[['sweep_{name}', '{folder}']]",
                "DATASETS.TRAIN", f"('sweep_{name}',)", "DATALOADER.NUM_WORKERS", str(workers),
                "SOLVER.IMS_PER_BATCH", "4", "MODEL.DEVICE", "cpu",
                "INPUT.SSPRL.CROP_SIZES", "[32, 16]", "INPUT.SSPRL.PYRAMID_RESIZE", "[32, 48]",
                "INPUT.SSPRL.PATCH_SIZES", "[16, 16]",
            ],
        )  # fmt: skip
        before, start = num_skipped_images(), time.time()
        try:
            it = iter(build_pretrain_train_loader(cfg))
            for _ in range(12):
                next(it)
            result = "loaded 12 batches"
        except Exception as e:
            result = f"stopped: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
        print(
            f"pre-training loader, {workers} workers, {name} folder: {result}; skipped images "
            f"counted in the training process: {num_skipped_images() - before} "
            f"({time.time() - start:.1f} s)"
        )


if __name__ == "__main__":
    main()
