"""Start-up validation of a merged config: every check names the key and the fix.

Only the keys are checked here. Checks that read files or dataset metadata (weights, class
counts) run in :mod:`ssprl_d2.engine.preflight`.
"""
import logging
import math

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog

from .choices import (
    AMP_PRECISIONS,
    CLASSIFIER_MODES,
    CROSS_INPUTS,
    GROUP_CROPS,
    LOADER_KERNELS,
    MASK_FORMATS,
    OPTIMIZERS,
    PHOTOMETRIC_ON,
    RESAMPLE_MODES,
    SEM_SEG_TEST_MODES,
    check_choice,
)
from .tasks import TASK_CLASSIFY, TASK_PRETRAIN, TASK_SEGMENT, task_of

logger = logging.getLogger(__name__)


def validate_config(cfg: CfgNode) -> None:
    """Raise ``ValueError`` naming the offending key when the config is inconsistent."""
    job_validators = {
        TASK_PRETRAIN: validate_ssprl_config,
        TASK_CLASSIFY: validate_classifier_keys,
        TASK_SEGMENT: validate_segmentation_config,
    }
    task = task_of(cfg)
    if task in job_validators:
        job_validators[task](cfg)
    if task == TASK_PRETRAIN:
        _warn_cpu_photometric(cfg)
    validate_knn_config(cfg)
    check_choice("INPUT.MASK_FORMAT", cfg.INPUT.MASK_FORMAT, MASK_FORMATS)
    check_choice("SOLVER.OPTIMIZER", cfg.SOLVER.OPTIMIZER, OPTIMIZERS)
    check_choice("SOLVER.AMP.PRECISION", cfg.SOLVER.AMP.PRECISION, AMP_PRECISIONS)
    device = str(cfg.MODEL.DEVICE)
    if cfg.SOLVER.AMP.ENABLED and device == "cpu" and cfg.SOLVER.AMP.PRECISION != "bfloat16":
        raise ValueError(
            f"SOLVER.AMP.PRECISION {cfg.SOLVER.AMP.PRECISION!r} is not supported on a CPU "
            "MODEL.DEVICE (float16 autocast needs CUDA): set SOLVER.AMP.PRECISION bfloat16, or "
            "SOLVER.AMP.ENABLED False"
        )
    if cfg.SOLVER.AMP.ENABLED and device != "cpu" and not device.startswith("cuda"):
        raise ValueError(
            f"SOLVER.AMP.ENABLED needs CUDA or a CPU MODEL.DEVICE, got {cfg.MODEL.DEVICE!r}: set "
            "MODEL.DEVICE cuda or cpu, or SOLVER.AMP.ENABLED False"
        )


def validate_ssprl_config(cfg: CfgNode) -> None:
    """Fail at start-up, naming the key, when the pre-training config is inconsistent."""
    c, inp = cfg.MODEL.SSPRL, cfg.INPUT.SSPRL
    grids = list(inp.GRIDS)
    num_scales = 1 + len(grids)

    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ValueError(f"Invalid SS-PRL config: {msg}")

    need(
        len(inp.CROP_SIZES) == len(inp.NUM_CROPS) == len(inp.MIN_SCALES) == len(inp.MAX_SCALES),
        "INPUT.SSPRL.CROP_SIZES, NUM_CROPS, MIN_SCALES and MAX_SCALES must have equal lengths",
    )
    n_crops = sum(inp.NUM_CROPS)
    need(
        n_crops >= 2,
        f"at least 2 scale-0 crops are needed, INPUT.SSPRL.NUM_CROPS={list(inp.NUM_CROPS)}",
    )
    for lo, hi in zip(inp.MIN_SCALES, inp.MAX_SCALES):
        need(0 < lo <= hi <= 1, "INPUT.SSPRL.MIN/MAX_SCALES must satisfy 0 < min <= max <= 1")
    need(
        len(inp.PYRAMID_RESIZE) == len(grids) == len(inp.PATCH_SIZES) == len(inp.PYRAMID_SCALES),
        f"INPUT.SSPRL.GRIDS {grids}, PYRAMID_RESIZE {list(inp.PYRAMID_RESIZE)}, PATCH_SIZES "
        f"{list(inp.PATCH_SIZES)} and PYRAMID_SCALES must have one entry per pyramid scale",
    )
    for s, (g, size, patch) in enumerate(zip(grids, inp.PYRAMID_RESIZE, inp.PATCH_SIZES), 1):
        need(g >= 1, f"INPUT.SSPRL.GRIDS[{s - 1}]={g} must be >= 1")
        if size % g:
            lower = (size // g) * g
            raise ValueError(
                f"Invalid SS-PRL config: INPUT.SSPRL.PYRAMID_RESIZE[{s - 1}]={size} is not "
                f"divisible by its grid INPUT.SSPRL.GRIDS[{s - 1}]={g}; use {lower} or "
                f"{lower + g}."
            )
        need(
            patch <= size // g,
            f"INPUT.SSPRL.PATCH_SIZES[{s - 1}]={patch} is larger than its grid cell "
            f"({size}/{g} = {size // g} px); lower it or raise PYRAMID_RESIZE[{s - 1}]",
        )
    need(
        len(c.NUM_PROTOTYPES) == num_scales,
        f"MODEL.SSPRL.NUM_PROTOTYPES has {len(c.NUM_PROTOTYPES)} entries, expected one per "
        f"scale ({num_scales} = 1 + len(INPUT.SSPRL.GRIDS))",
    )
    need(
        len(c.ALPHA) == num_scales,
        f"MODEL.SSPRL.ALPHA has {len(c.ALPHA)} entries, expected {num_scales} (one per scale)",
    )
    need(
        len(c.BETA) == len(grids),
        f"MODEL.SSPRL.BETA has {len(c.BETA)} entries, expected {len(grids)} (one per pyramid "
        "scale s >= 1)",
    )
    need(
        len(c.QUEUE.LENGTHS) in (0, num_scales),
        f"MODEL.SSPRL.QUEUE.LENGTHS has {len(c.QUEUE.LENGTHS)} entries, expected {num_scales}",
    )
    need(
        len(c.ASSIGN_CROPS) >= 1 and all(0 <= i < n_crops for i in c.ASSIGN_CROPS),
        f"MODEL.SSPRL.ASSIGN_CROPS={list(c.ASSIGN_CROPS)} must index the {n_crops} scale-0 crops",
    )
    check_choice("MODEL.SSPRL.CROSS_INPUT", c.CROSS_INPUT, CROSS_INPUTS)
    need(
        not c.SHARED_PROTOTYPES or len(set(c.NUM_PROTOTYPES)) == 1,
        "MODEL.SSPRL.SHARED_PROTOTYPES needs the same K for every scale in NUM_PROTOTYPES",
    )
    check_choice("MODEL.SSPRL.GROUP_CROPS", c.GROUP_CROPS, GROUP_CROPS)
    if c.COMPILE:
        _check_compile_backend(c.COMPILE_BACKEND)
    need(
        c.IN_FEATURE in cfg.MODEL.RESNETS.OUT_FEATURES,
        f"MODEL.SSPRL.IN_FEATURE={c.IN_FEATURE} must be in MODEL.RESNETS.OUT_FEATURES",
    )
    check_choice("INPUT.SSPRL.PHOTOMETRIC_ON", inp.PHOTOMETRIC_ON, PHOTOMETRIC_ON)
    check_choice("INPUT.SSPRL.LOADER_KERNEL", inp.LOADER_KERNEL, LOADER_KERNELS)
    check_choice("INPUT.SSPRL.RESAMPLE", inp.RESAMPLE, RESAMPLE_MODES)
    need(c.TEMPERATURE > 0 and c.SINKHORN_EPSILON > 0, "TEMPERATURE and SINKHORN_EPSILON > 0")
    need(not math.isnan(c.CROSS_WEIGHT) and c.CROSS_WEIGHT >= 0, "MODEL.SSPRL.CROSS_WEIGHT >= 0")


def _check_compile_backend(backend: str) -> None:
    # Local: importing torch._dynamo costs about a second, paid only when MODEL.SSPRL.COMPILE.
    import torch._dynamo

    backends = torch._dynamo.list_backends(exclude_tags=())
    if backend not in backends:
        raise ValueError(
            f"Invalid SS-PRL config: MODEL.SSPRL.COMPILE_BACKEND={backend!r} is not a "
            f"torch.compile backend ({', '.join(sorted(backends))})"
        )


def _warn_cpu_photometric(cfg: CfgNode) -> None:
    inp = cfg.INPUT.SSPRL
    photometric = max(inp.COLOR_JITTER_PROB, inp.GRAYSCALE_PROB, inp.BLUR_PROB) > 0
    if inp.PHOTOMETRIC_ON == "model" and str(cfg.MODEL.DEVICE) == "cpu" and photometric:
        logger.warning(
            "INPUT.SSPRL.PHOTOMETRIC_ON is 'model' on a CPU MODEL.DEVICE: colour jitter, "
            "grayscale and blur run in the training process (~11 ms per image on one core). "
            "For CPU training, INPUT.SSPRL.PHOTOMETRIC_ON loader does them in the loader "
            "workers, about 8x cheaper."
        )


def validate_classifier_keys(cfg: CfgNode) -> None:
    """The key checks of a MultiLabelClassifier config (its weights and datasets are checked by
    :func:`ssprl_d2.engine.preflight.check_classifier_inputs`)."""
    ccfg = cfg.MODEL.CLASSIFIER
    check_choice("MODEL.CLASSIFIER.MODE", ccfg.MODE, CLASSIFIER_MODES)
    if ccfg.NUM_CLASSES <= 0:
        raise ValueError(f"MODEL.CLASSIFIER.NUM_CLASSES must be positive: {ccfg.NUM_CLASSES}")
    if ccfg.BACKBONE_LR_FACTOR < 0:
        raise ValueError(
            f"MODEL.CLASSIFIER.BACKBONE_LR_FACTOR must be >= 0: {ccfg.BACKBONE_LR_FACTOR}"
        )
    if ccfg.IGNORE_VALUE in (0, 1):
        raise ValueError("MODEL.CLASSIFIER.IGNORE_VALUE must differ from the labels 0 and 1.")
    if ccfg.FAST_LINEAR.ENABLED and ccfg.MODE != "linear":
        raise ValueError("MODEL.CLASSIFIER.FAST_LINEAR.ENABLED needs MODEL.CLASSIFIER.MODE linear.")
    out_features = cfg.MODEL.RESNETS.OUT_FEATURES
    if "resnet" in cfg.MODEL.BACKBONE.NAME and ccfg.IN_FEATURE not in out_features:
        raise ValueError(
            f"MODEL.CLASSIFIER.IN_FEATURE {ccfg.IN_FEATURE!r} is not in MODEL.RESNETS.OUT_FEATURES "
            f"{list(cfg.MODEL.RESNETS.OUT_FEATURES)}."
        )
    icfg = cfg.INPUT.CLASSIFICATION
    if icfg.TEST_RESIZE < icfg.TEST_CROP_SIZE:
        raise ValueError(
            f"INPUT.CLASSIFICATION.TEST_RESIZE ({icfg.TEST_RESIZE}) must be >= TEST_CROP_SIZE "
            f"({icfg.TEST_CROP_SIZE})."
        )
    if not 0 <= cfg.DATASETS.CLASSIFICATION.LABEL_SUBSET_FRACTION <= 1:
        raise ValueError(
            "DATASETS.CLASSIFICATION.LABEL_SUBSET_FRACTION must be in [0, 1]: "
            f"{cfg.DATASETS.CLASSIFICATION.LABEL_SUBSET_FRACTION}"
        )


def validate_segmentation_config(cfg: CfgNode) -> None:
    """Raise ``ValueError`` naming the key when a segmentation config is inconsistent."""
    check_choice("TEST.SEM_SEG.MODE", cfg.TEST.SEM_SEG.MODE, SEM_SEG_TEST_MODES)
    if len(cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES) != 1:
        raise ValueError("MODEL.SEM_SEG_HEAD.IN_FEATURES must name one feature (e.g. ['res5'])")
    needed = set(cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES) | (
        {cfg.MODEL.FCN.AUX_IN_FEATURE} if cfg.MODEL.FCN.AUX_IN_FEATURE else set()
    )
    missing = needed - set(cfg.MODEL.RESNETS.OUT_FEATURES)
    if missing:
        raise ValueError(f"MODEL.RESNETS.OUT_FEATURES must include {sorted(missing)} "
                         "(read by the FCN heads)")
    if cfg.INPUT.SEG.PAD_TO_CROP and not cfg.INPUT.CROP.ENABLED:
        raise ValueError("INPUT.SEG.PAD_TO_CROP needs INPUT.CROP.ENABLED (the size to pad to)")


def validate_knn_config(cfg: CfgNode) -> None:
    """Raise ``ValueError`` naming the TEST.KNN key that is inconsistent (no-op when off)."""
    c = cfg.TEST.KNN
    if not c.TRAIN_DATASET:
        if c.TEST_DATASETS:
            raise ValueError(
                f"TEST.KNN.TEST_DATASETS={list(c.TEST_DATASETS)} is set but TEST.KNN.TRAIN_DATASET "
                "(the memory bank) is empty: set it to enable the kNN monitor."
            )
        return
    if not c.TEST_DATASETS:
        raise ValueError(
            "TEST.KNN.TRAIN_DATASET is set but TEST.KNN.TEST_DATASETS is empty: name at least one "
            "labelled dataset to query the memory bank."
        )
    known = set(DatasetCatalog.list())
    for key, names in (("TRAIN_DATASET", [c.TRAIN_DATASET]), ("TEST_DATASETS", c.TEST_DATASETS)):
        for name in names:
            if name not in known:
                raise ValueError(
                    f"TEST.KNN.{key}: dataset {name!r} is not registered; register it (e.g. "
                    "DATASETS.SSPRL.COCO_JSONS) or use a registered labelled dataset such as "
                    "'ssprl_demo_train' / 'ssprl_demo_val'."
                )
    checks = (
        (c.PERIOD >= 0, f"TEST.KNN.PERIOD must be >= 0 (0 = only after training), got {c.PERIOD}"),
        (c.K >= 1, f"TEST.KNN.K must be >= 1, got {c.K}"),
        (c.TEMPERATURE > 0, f"TEST.KNN.TEMPERATURE must be > 0, got {c.TEMPERATURE}"),
        (c.MAX_IMAGES >= 0, f"TEST.KNN.MAX_IMAGES must be >= 0 (0 = all), got {c.MAX_IMAGES}"),
        (c.BATCH_SIZE >= 1, f"TEST.KNN.BATCH_SIZE must be >= 1, got {c.BATCH_SIZE}"),
    )
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)
