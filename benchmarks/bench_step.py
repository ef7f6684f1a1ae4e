#!/usr/bin/env python
"""Throughput and peak memory of one full SS-PRL training step (forward, backward, LARS).

Builds the real ``SSPRL`` model and optimizer from a config, feeds it a batch produced by the
real mapper from image files (decoded once; the same batch every iteration), and reports
images/s and peak memory of the requested settings next to a reference run in the same
process (fp32, no channels-last, one backbone pass per crop group: the naive baseline).
With ``--num-workers N`` it also runs the step fed by the real data loader
(``build_pretrain_train_loader``), which shows whether data or compute is the bound.

Defaults: on CPU a ResNet-18 backbone and batch 2; on CUDA ResNet-50, batch 64 (the paper's
per-GPU batch). Crops follow the config (paper setting by default). Examples::

    python benchmarks/bench_step.py --device cpu --threads 2
    python benchmarks/bench_step.py --device cuda --amp bf16 --channels-last \\
        --group-crops resolution --num-workers 8 --images /path/to/train/images

Peak memory: ``torch.cuda.max_memory_allocated`` on GPU; on CPU the peak resident set size of
the process (``getrusage`` maxrss, reset before each run through /proc/self/clear_refs).
"""
import argparse
import contextlib
import gc
import itertools
import json
import os
import resource
import time
import zlib
from typing import Dict, List, Optional

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import ssprl_d2  # noqa: F401  (registers datasets and models)
from ssprl_d2.config import add_ssprl_config
from ssprl_d2.data import get_demo_root
from ssprl_d2.data.build import build_pretrain_train_loader
from ssprl_d2.data.datasets import register_from_config
from ssprl_d2.data.pyramid_mapper import PyramidDatasetMapper
from ssprl_d2.solver import build_ssprl_optimizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "ssprl_pretrain.yaml")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
BASELINE = {"amp": "none", "channels_last": False, "group_crops": "none", "compile": ""}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--depth", type=int, default=0, help="ResNet depth (CPU 18, GPU 50)")
    parser.add_argument("--batch-size", type=int, default=0, help="images per step (CPU 2, GPU 64)")
    parser.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    parser.add_argument("--channels-last", action="store_true", help="MODEL.SSPRL.CHANNELS_LAST")
    parser.add_argument(
        "--group-crops", default="resolution", choices=("resolution", "none"),
        help="MODEL.SSPRL.GROUP_CROPS",
    )
    parser.add_argument("--compile", default="", metavar="BACKEND",
                        help="torch.compile the backbone with BACKEND (e.g. inductor) in the "
                        "measured run (MODEL.SSPRL.COMPILE)")
    parser.add_argument("--photometric", default="model", choices=("model", "loader"),
                        help="INPUT.SSPRL.PHOTOMETRIC_ON")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    parser.add_argument("--num-workers", type=int, default=-1,
                        help="also time the step fed by the real loader with N workers")
    parser.add_argument("--images", default="", help="image folder (default: the demo images)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the reference run")
    parser.add_argument("--no-queue", action="store_true",
                        help="leave the queues empty (default: filled, the steady state)")
    parser.add_argument("--json", default="", help="write the results to this JSON file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    on_gpu = args.device.startswith("cuda")
    args.depth = args.depth or (50 if on_gpu else 18)
    args.batch_size = args.batch_size or (64 if on_gpu else 2)
    return args


def build_cfg(args, settings: Dict, num_workers: int = 0):
    """The benchmark config: file + overrides + the run's settings."""
    cfg = get_cfg()
    add_ssprl_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.MODEL.DEVICE = args.device
    cfg.MODEL.RESNETS.DEPTH = args.depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if args.depth in (18, 34) else 256
    cfg.SOLVER.IMS_PER_BATCH = args.batch_size
    # Steady state: prototypes trained (not frozen), queues on from the first step.
    cfg.MODEL.SSPRL.FREEZE_PROTOTYPES_ITERS = 0
    cfg.MODEL.SSPRL.QUEUE.START_ITER = 0
    cfg.MODEL.SSPRL.QUEUE.START_EPOCH = -1.0
    cfg.MODEL.SSPRL.CHANNELS_LAST = settings["channels_last"]
    cfg.MODEL.SSPRL.GROUP_CROPS = settings["group_crops"]
    cfg.MODEL.SSPRL.COMPILE = bool(settings["compile"])
    cfg.MODEL.SSPRL.COMPILE_BACKEND = settings["compile"] or cfg.MODEL.SSPRL.COMPILE_BACKEND
    cfg.INPUT.SSPRL.PHOTOMETRIC_ON = args.photometric
    cfg.DATALOADER.NUM_WORKERS = num_workers
    cfg.merge_from_list(list(args.opts))
    return cfg


def list_images(folder: str, limit: int) -> List[str]:
    files = sorted(
        os.path.join(root, f)
        for root, _, names in os.walk(folder)
        for f in names
        if f.endswith(IMAGE_EXTENSIONS)
    )
    if not files:
        raise FileNotFoundError(f"No images found under {folder!r}")
    return files[:limit]


def make_batch(cfg, files: List[str]) -> List[dict]:
    """One batch of mapper outputs (the files cycled to the batch size)."""
    mapper = PyramidDatasetMapper(cfg)
    batch = []
    for i, f in enumerate(itertools.islice(itertools.cycle(files), 4 * cfg.SOLVER.IMS_PER_BATCH)):
        out = mapper({"file_name": f, "image_id": i}, torch.Generator().manual_seed(i))
        if out is not None:
            batch.append(out)
        if len(batch) == cfg.SOLVER.IMS_PER_BATCH:
            return batch
    raise RuntimeError(f"Could not read {cfg.SOLVER.IMS_PER_BATCH} images from {files[:4]}...")


def _fill_queues(model) -> None:
    """Fill every queue with unit vectors, as after the queue start epoch."""
    with torch.no_grad():
        for q in model.queues:
            if q.length > 0:
                unit = torch.nn.functional.normalize(torch.randn_like(q.features), dim=-1)
                q.features.copy_(unit)
                q.num_filled.fill_(q.length)


def _reset_peak(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    else:
        try:  # Linux: reset the peak RSS so each run reports its own
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def _peak_mib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_setting(args, settings: Dict, files: List[str], label: str) -> Dict:
    """Time ``--iters`` training steps (after ``--warmup``) of one setting; with
    ``--num-workers`` also the same step fed by the real loader."""
    device = args.device
    cfg = build_cfg(args, settings)
    _reset_peak(device)
    model = build_model(cfg)
    model.train()
    if not args.no_queue:
        _fill_queues(model)
    optimizer = build_ssprl_optimizer(cfg, model)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(settings["amp"])
    autocast = (
        (lambda: torch.autocast(device_type=torch.device(device).type, dtype=dtype))
        if dtype is not None
        else contextlib.nullcontext
    )
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=dtype == torch.float16)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def step(batch):
        with autocast():
            losses = model(batch)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach())

    batch = make_batch(cfg, files)
    with EventStorage(0) as storage:
        for _ in range(args.warmup):
            step(batch)
            storage.iter += 1
        sync()
        start = time.perf_counter()
        for _ in range(args.iters):
            loss = step(batch)
            storage.iter += 1
        sync()
        elapsed = time.perf_counter() - start
    result = {
        "label": label,
        **settings,
        "images_per_s": args.batch_size * args.iters / elapsed,
        "s_per_step": elapsed / args.iters,
        "peak_mib": _peak_mib(device),
        "last_loss": loss,
    }
    if args.num_workers >= 0:
        result.update(run_with_loader(args, settings, step))
    return result


def run_setting_or_oom(args, settings: Dict, files: List[str], label: str) -> Dict:
    """:func:`run_setting`; a run that does not fit in memory (e.g. the fp32 reference at the
    paper's batch on a GPU) is reported as such instead of ending the benchmark."""
    try:
        return run_setting(args, settings, files, label)
    except torch.OutOfMemoryError as e:
        gc.collect()
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return {"label": label, **settings, "out_of_memory": True, "error": first_line[:160]}


def run_with_loader(args, settings: Dict, step) -> Dict:
    """The step fed by ``build_pretrain_train_loader`` (end-to-end images/s)."""
    cfg = build_cfg(args, settings, num_workers=args.num_workers)
    name = f"ssprl_bench_step_{zlib.crc32(os.path.abspath(args.images).encode()):08x}"
    cfg.DATASETS.SSPRL.IMAGE_FOLDERS = [[name, args.images]]
    cfg.DATASETS.TRAIN = (name,)
    cfg.SEED = 0
    register_from_config(cfg)
    loader = iter(build_pretrain_train_loader(cfg))
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    with EventStorage(0) as storage:
        for _ in range(max(1, args.warmup)):
            step(next(loader))
            storage.iter += 1
        sync()
        start = time.perf_counter()
        for _ in range(args.iters):
            step(next(loader))
            storage.iter += 1
        sync()
        elapsed = time.perf_counter() - start
    del loader
    return {
        "num_workers": args.num_workers,
        "end_to_end_images_per_s": args.batch_size * args.iters / elapsed,
    }


def main(argv: Optional[List[str]] = None) -> Dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if not args.images:
        args.images = os.path.join(get_demo_root(), "images", "train")
    files = list_images(args.images, max(args.batch_size, 8))
    measured = {
        "amp": args.amp,
        "channels_last": args.channels_last,
        "group_crops": args.group_crops,
        "compile": args.compile,
    }
    print(
        f"SS-PRL step on {args.device}: ResNet-{args.depth}, batch {args.batch_size}, "
        f"photometric on {args.photometric}, {torch.get_num_threads()} thread(s), "
        f"{args.warmup} warm-up + {args.iters} timed iterations, config {args.config_file} "
        f"{' '.join(args.opts)}"
    )
    runs = []
    if not args.no_baseline and measured != BASELINE:
        runs.append(run_setting_or_oom(args, dict(BASELINE), files, "reference"))
    runs.append(run_setting_or_oom(args, measured, files, "measured"))
    ref = runs[0]
    header = (
        f"{'run':10s} {'amp':5s} {'ch-last':7s} {'groups':10s} {'compile':9s} {'img/s':>8s} "
        f"{'s/step':>8s} "
        f"{'peak MiB':>9s} {'vs ref':>7s}"
    )
    print(header + (f" {'e2e img/s':>10s}" if args.num_workers >= 0 else ""))
    for r in runs:
        if r.get("out_of_memory"):
            r["ratio_vs_reference"] = None
            print(f"{r['label']:10s} {r['amp']:5s} {str(r['channels_last']):7s} "
                  f"{r['group_crops']:10s} {r['compile'] or '-':9s} out of memory: {r['error']}")
            continue
        if ref.get("out_of_memory"):
            r["ratio_vs_reference"] = r["peak_ratio_vs_reference"] = None
        else:
            r["ratio_vs_reference"] = r["images_per_s"] / ref["images_per_s"]
            r["peak_ratio_vs_reference"] = r["peak_mib"] / ref["peak_mib"]
        ratio = "n/a" if r["ratio_vs_reference"] is None else f"{r['ratio_vs_reference']:.2f}x"
        line = (
            f"{r['label']:10s} {r['amp']:5s} {str(r['channels_last']):7s} {r['group_crops']:10s} "
            f"{r['compile'] or '-':9s} "
            f"{r['images_per_s']:8.2f} {r['s_per_step']:8.3f} {r['peak_mib']:9.0f} "
            f"{ratio:>7s}"
        )
        if "end_to_end_images_per_s" in r:
            e2e = r["end_to_end_images_per_s"]
            bound = "data-bound" if e2e < 0.9 * r["images_per_s"] else "compute-bound"
            line += f" {e2e:10.2f}  ({r['num_workers']} workers: {bound})"
        print(line)
    out = {
        "settings": {
            "device": args.device,
            "depth": args.depth,
            "batch_size": args.batch_size,
            "photometric": args.photometric,
            "threads": torch.get_num_threads(),
            "iters": args.iters,
            "warmup": args.warmup,
            "config_file": args.config_file,
            "opts": list(args.opts),
            "images": args.images,
            "torch": torch.__version__,
        },
        "runs": runs,
        "ratio_vs_reference": runs[-1].get("ratio_vs_reference"),
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"wrote {args.json}")
    return out


if __name__ == "__main__":
    main()
