"""Shared helpers of the pre-training tests: a tiny image folder and a tiny config."""
import hashlib
import os

import numpy as np
from PIL import Image

from ssprl_d2.engine.setup import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_path(rel: str) -> str:
    return os.path.join(REPO, rel)


# The tiny sizes shared with `tools/run_demo.py --tiny` (toy crops, tiny heads, batch 4).
TINY_CONFIG = config_path("configs/quick_schedules/ssprl_pretrain_tiny.yaml")
# The tests' own overrides of it: CPU, small queues that fill from iteration 1, a warm-up, a
# fixed seed, and no kNN monitor (its test sets it up itself).
TINY_OPTS = [
    "MODEL.DEVICE", "cpu",
    "MODEL.SSPRL.QUEUE.LENGTHS", "[8, 16, 36]",
    "MODEL.SSPRL.QUEUE.START_ITER", "1",
    "SOLVER.WARMUP_ITERS", "2",
    "DATALOADER.NUM_WORKERS", "0",
    "SEED", "7",
    # The demo config trains in bf16 and runs the kNN monitor; the tiny runs test those apart.
    "SOLVER.AMP.ENABLED", "False",
    "TEST.KNN.TRAIN_DATASET", "",
    "TEST.KNN.TEST_DATASETS", "()",
]


def write_image_folder(root: str, n: int = 10, corrupt: int = 0) -> str:
    """``n`` small JPEGs of coloured rectangles (+ ``corrupt`` unreadable files)."""
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = np.full((56, 64, 3), rng.integers(0, 255, 3), dtype=np.uint8)
        y, x = rng.integers(0, 30, 2)
        img[y : y + 24, x : x + 30] = rng.integers(0, 255, 3)
        Image.fromarray(img).save(os.path.join(root, f"img_{i:03d}.jpg"), quality=90)
    for i in range(corrupt):
        with open(os.path.join(root, f"broken_{i}.jpg"), "wb") as f:
            f.write(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    return root


def tiny_pretrain_cfg(folder: str, output_dir: str, name: str = "", extra=()):
    # One dataset name per folder: registrations live for the whole test process.
    name = name or "tiny_pretrain_" + hashlib.sha1(folder.encode()).hexdigest()[:10]
    cfg = load_config(
        TINY_CONFIG,
        [
            "DATASETS.SSPRL.IMAGE_FOLDERS", f"[['{name}', '{folder}']]",
            "DATASETS.TRAIN", f"('{name}',)",
            "OUTPUT_DIR", output_dir,
            *TINY_OPTS,
            *extra,
        ],
    )
    return cfg
