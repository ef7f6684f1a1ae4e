"""Shared helper of the detection tests: a tiny Mask R-CNN config on a COCO json."""
import os

from ssprl_d2.engine.setup import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_detection_cfg(json_file, image_root, name, output_dir, num_classes, max_iter, extra=()):
    """``configs/detection/mask_rcnn_demo.yaml`` on ``json_file`` at 64 px, batch 2, no eval."""
    return load_config(
        os.path.join(REPO, "configs/detection/mask_rcnn_demo.yaml"),
        [
            "DATASETS.SSPRL.COCO_JSONS", f"[['{name}', '{json_file}', '{image_root}']]",
            "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()",
            "MODEL.ROI_HEADS.NUM_CLASSES", str(num_classes), "OUTPUT_DIR", str(output_dir),
            "SOLVER.MAX_ITER", str(max_iter), "SOLVER.IMS_PER_BATCH", "2", "SOLVER.STEPS", "()",
            "SOLVER.WARMUP_ITERS", "1", "INPUT.MIN_SIZE_TRAIN", "(64,)",
            "INPUT.MAX_SIZE_TRAIN", "64", "DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_PERIOD", "0",
            *extra,
        ],
    )  # fmt: skip
