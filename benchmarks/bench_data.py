#!/usr/bin/env python
"""Data-pipeline throughput of SS-PRL augmentation: images/s per CPU core.

Measures, on the same JPEG files (decoding included), in one process with one thread:

- ``reference``: the release recipe with PIL + torchvision transforms, one crop at a time
  (benchmarks/reference_pipeline.py);
- ``loader/interpolate``, ``loader/roi_align``: ssprl_d2's mapper with all augmentation in the
  loader (``INPUT.SSPRL.PHOTOMETRIC_ON loader``, default ``LOADER_KERNEL numba``), for both
  resampling modes; ``loader-torch/interpolate``: the same with ``LOADER_KERNEL torch`` (the
  batched torch ops that the model runs on the device);
- ``model/interpolate``, ``model/roi_align``: the CPU part of the mapper when photometric
  augmentation runs on the training device (``PHOTOMETRIC_ON model``);
- optionally ``device part``: that photometric augmentation plus normalisation, batched as
  the model runs it, on ``--device-part cpu|cuda``.

Figures are CPU seconds of this process (``time.process_time``; one thread, so per core),
minimum over ``--rounds`` interleaved rounds (the machine may be shared), with the ratio to
the reference. glibc's heap trimming is turned off first (``--no-steady-heap`` keeps it), so
that pipelines sharing this process do not page-fault each other's freed memory back in
(see :func:`steady_heap`). Example::

    python benchmarks/bench_data.py --images ../shared/data/coco128_train2017/images \\
        --num-images 32 --rounds 3 --json bench_data.json
"""
import argparse
import glob
import importlib.util
import json
import os
import random
import sys
import time
from typing import Callable, Dict, List, Optional

import torch
from detectron2.config import get_cfg

import ssprl_d2  # noqa: F401  (registers datasets and models)
from ssprl_d2.config import add_ssprl_config
from ssprl_d2.data import get_demo_root
from ssprl_d2.data.build import sample_seed
from ssprl_d2.data.pyramid_mapper import PyramidDatasetMapper
from ssprl_d2.ops import apply_photometric

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _load_sibling(name: str):
    """A module of this folder (benchmarks/ is not a package), by file path."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


ReferencePyramidPipeline = _load_sibling("reference_pipeline").ReferencePyramidPipeline
DEFAULT_CONFIG = os.path.join(REPO, "configs", "ssprl_pretrain.yaml")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
MODES = (
    "loader/interpolate",
    "loader/roi_align",
    "loader-torch/interpolate",
    "model/interpolate",
    "model/roi_align",
)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", default="", help="image folder (default: the demo images)")
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, help="crop settings")
    parser.add_argument("--num-images", type=int, default=32, help="images per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument(
        "--modes", nargs="+", default=list(MODES), choices=MODES, help="ssprl_d2 modes to time"
    )
    parser.add_argument(
        "--device-part",
        default="auto",
        choices=("auto", "none", "cpu", "cuda"),
        help="also time the device-side photometric part there (auto: cuda if available)",
    )
    parser.add_argument("--device-batch", type=int, default=16, help="images per device batch")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (per core: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-steady-heap",
        dest="steady_heap",
        action="store_false",
        help="keep glibc's default heap trimming (see steady_heap())",
    )
    parser.add_argument("--json", default="", help="write the results to this JSON file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser.parse_args(argv)


def steady_heap() -> bool:
    """Stop glibc from returning freed heap memory to the OS (``mallopt``: no trimming, no
    ``mmap`` for blocks under 64 MiB). Returns whether it applied (glibc only).

    All pipelines run in this one process, interleaved. With glibc's defaults, the memory one
    pipeline frees is trimmed off the heap and the next pipeline page-faults it back in
    (~1.7 us per 4 KiB page on a VM): measured here, ssprl_d2's loader pipeline took 500-700
    page faults per image (~1 ms) when run after the reference, and none when run alone, as a
    data-loader worker runs it. With the heap kept, every pipeline is timed in the steady
    state a dedicated worker has; the reference is not slowed (its own faults vanish too).
    """
    # Local: only this glibc-specific tweak loads a C library.
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(
            libc.mallopt(m_trim_threshold, 1 << 30) and libc.mallopt(m_mmap_threshold, 64 << 20)
        )
    except (OSError, AttributeError):
        return False


def list_images(folder: str, limit: int) -> List[str]:
    """The first ``limit`` image files of ``folder`` (recursive, sorted)."""
    files = sorted(
        f
        for f in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
        if f.endswith(IMAGE_EXTENSIONS)
    )
    if not files:
        raise FileNotFoundError(f"No images found under {folder!r}")
    return files[:limit]


def build_cfg(config_file: str, opts: List[str]):
    """Config with the ssprl_d2 keys: file + overrides (no dataset checks: only the crop
    settings are used)."""
    cfg = get_cfg()
    add_ssprl_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg


def build_pipelines(cfg, modes) -> Dict[str, Callable[[str, int], object]]:
    """name -> fn(file_name, index) running one image through that pipeline."""
    reference = ReferencePyramidPipeline.from_config(cfg)
    pipes: Dict[str, Callable[[str, int], object]] = {"reference": lambda f, i: reference(f)}
    for mode in modes:
        photometric_on, resample = mode.split("/")
        c = cfg.clone()
        if photometric_on == "loader-torch":
            photometric_on, c.INPUT.SSPRL.LOADER_KERNEL = "loader", "torch"
        c.INPUT.SSPRL.PHOTOMETRIC_ON = photometric_on
        c.INPUT.SSPRL.RESAMPLE = resample
        mapper = PyramidDatasetMapper(c)

        def run(f, i, mapper=mapper):
            # As the loader does: one generator per sample, seeded by its stream position.
            g = torch.Generator().manual_seed(sample_seed(0, i))
            return mapper({"file_name": f, "image_id": i}, g)

        pipes[mode] = run
    return pipes


def time_pipelines(pipes, files: List[str], rounds: int) -> Dict[str, Dict[str, List[float]]]:
    """Interleaved rounds; per pipeline and round, CPU and wall seconds per image."""
    for fn in pipes.values():  # warm-up (lazy imports, allocator, oneDNN primitives)
        for i, f in enumerate(files[:2]):
            fn(f, i)
    times = {name: {"cpu": [], "wall": []} for name in pipes}
    for _ in range(rounds):
        for name, fn in pipes.items():
            cpu, wall = time.process_time(), time.perf_counter()
            for i, f in enumerate(files):
                fn(f, i)
            times[name]["cpu"].append((time.process_time() - cpu) / len(files))
            times[name]["wall"].append((time.perf_counter() - wall) / len(files))
    return times


def time_device_part(cfg, files: List[str], device: str, batch: int, rounds: int) -> dict:
    """Photometric augmentation + normalisation of mapper outputs (``PHOTOMETRIC_ON model``)
    batched per crop resolution, as the model does it before the backbone."""
    c = cfg.clone()
    c.INPUT.SSPRL.PHOTOMETRIC_ON = "model"
    mapper = PyramidDatasetMapper(c)
    outs = [
        mapper({"file_name": f}, torch.Generator().manual_seed(i)) for i, f in enumerate(files)
    ]
    outs = [o for o in outs if o is not None]
    mean = torch.tensor(c.MODEL.PIXEL_MEAN, device=device).view(1, -1, 1, 1)
    std = torch.tensor(c.MODEL.PIXEL_STD, device=device).view(1, -1, 1, 1)

    def groups(chunk):
        """(uint8 crops, params) per resolution, stacked over the images of ``chunk``."""
        by_size: Dict[tuple, list] = {}
        for o in chunk:
            units = list(o["crops"]) + [v for p in o["patches"] for v in p.flatten(0, 1)]
            for unit, row in zip(units, o["photometric"]):
                by_size.setdefault(tuple(unit.shape), []).append((unit, row))
        return [
            (torch.stack([u for u, _ in items]), torch.stack([r for _, r in items]))
            for items in by_size.values()
        ]

    chunks = [groups(outs[i : i + batch]) for i in range(0, len(outs), batch)]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def run():
        for chunk in chunks:
            for x, p in chunk:
                x = x.to(device, non_blocking=True).float().div_(255.0)
                x = apply_photometric(x, p.to(device), inplace=True)
                (x * 255.0 - mean) / std
        sync()

    run()
    cpu_times, wall_times = [], []
    for _ in range(rounds):
        cpu, wall = time.process_time(), time.perf_counter()
        run()
        cpu_times.append((time.process_time() - cpu) / len(outs))
        wall_times.append((time.perf_counter() - wall) / len(outs))
    return {
        "device": device,
        "cpu_s_per_image": min(cpu_times),
        "wall_s_per_image": min(wall_times),
    }


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)
    heap = steady_heap() if args.steady_heap else False
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    if not args.images:
        args.images = os.path.join(get_demo_root(), "images", "train")
    files = list_images(args.images, args.num_images)
    cfg = build_cfg(args.config_file, args.opts)
    s = cfg.INPUT.SSPRL
    n_out = sum(s.NUM_CROPS) + sum(2 * g * g for g in s.GRIDS)
    print(
        f"{len(files)} images from {args.images}; {n_out} crops per image: "
        f"{list(s.NUM_CROPS)} x {list(s.CROP_SIZES)} + 2 views x grids {list(s.GRIDS)} "
        f"(patches {list(s.PATCH_SIZES)}); {torch.get_num_threads()} thread(s), "
        f"{args.rounds} rounds, min over rounds; steady heap: {'yes' if heap else 'no'}"
    )
    pipes = build_pipelines(cfg, args.modes)
    times = time_pipelines(pipes, files, args.rounds)
    ref = min(times["reference"]["cpu"])
    results = {}
    header = f"{'pipeline':28s} {'ms/img (CPU)':>12s} {'img/s/core':>10s} {'vs ref':>7s}"
    print(header + f" {'wall ms/img':>11s}")
    for name, t in times.items():
        cpu = min(t["cpu"])
        label = name + (" (CPU part)" if name.startswith("model/") else "")
        results[name] = {
            "cpu_ms_per_image": 1e3 * cpu,
            "images_per_s_per_core": 1.0 / cpu,
            "ratio_vs_reference": ref / cpu,
            "wall_ms_per_image": 1e3 * min(t["wall"]),
            "cpu_ms_per_image_rounds": [1e3 * v for v in t["cpu"]],
        }
        print(
            f"{label:28s} {1e3 * cpu:12.2f} {1.0 / cpu:10.1f} {ref / cpu:6.2f}x"
            f" {1e3 * min(t['wall']):11.2f}"
        )
    device = args.device_part
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "none":
        part = time_device_part(cfg, files, device, args.device_batch, args.rounds)
        results["device_part"] = {
            "device": device,
            "cpu_ms_per_image": 1e3 * part["cpu_s_per_image"],
            "wall_ms_per_image": 1e3 * part["wall_s_per_image"],
            "images_per_s": 1.0 / part["wall_s_per_image"],
        }
        print(
            f"{'device part on ' + device:28s} {1e3 * part['cpu_s_per_image']:12.2f} "
            f"{'':>10s} {'':>7s} {1e3 * part['wall_s_per_image']:11.2f}   "
            f"({1.0 / part['wall_s_per_image']:.1f} img/s; photometric + normalise, batched "
            f"{args.device_batch} images)"
        )
    out = {
        "settings": {
            "images": args.images,
            "num_images": len(files),
            "config_file": args.config_file,
            "opts": list(args.opts),
            "crops_per_image": n_out,
            "threads": torch.get_num_threads(),
            "rounds": args.rounds,
            "steady_heap": heap,
            "torch": torch.__version__,
        },
        "results": results,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.json}")
    return out


if __name__ == "__main__":
    main()
