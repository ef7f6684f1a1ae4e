"""The allowed values of every enumerated config key, declared once.

The key comments in :mod:`.defaults`, the validators in :mod:`.validate` and the code that acts
on a value (mappers, models) all use these tuples; :func:`check_choice` gives the one error
message.
"""
from typing import Sequence

# MODEL.SSPRL.CROSS_INPUT: input of the cross-scale learners.
CROSS_INPUTS = ("scores", "probs")
# MODEL.SSPRL.GROUP_CROPS: backbone passes over the crops.
GROUP_CROPS = ("resolution", "none")
# INPUT.SSPRL.PHOTOMETRIC_ON: where photometric augmentation runs.
PHOTOMETRIC_ON = ("model", "loader")
# INPUT.SSPRL.LOADER_KERNEL: implementation of loader-side photometric augmentation.
LOADER_KERNELS = ("numba", "torch")
# INPUT.SSPRL.RESAMPLE: resampling of crops.
RESAMPLE_MODES = ("interpolate", "roi_align")
# MODEL.CLASSIFIER.MODE: frozen backbone or whole network trained.
CLASSIFIER_MODES = ("linear", "finetune")
# TEST.SEM_SEG.MODE: inference of SlidingWindowSemanticSegmentor.
SEM_SEG_TEST_MODES = ("whole", "slide")
# INPUT.MASK_FORMAT: instance mask format of detection training.
MASK_FORMATS = ("auto", "polygon", "bitmask")
# SOLVER.OPTIMIZER.
OPTIMIZERS = ("SGD", "LARS")
# SOLVER.AMP.PRECISION.
AMP_PRECISIONS = ("float16", "bfloat16")


def check_choice(key: str, value, choices: Sequence) -> None:
    """Raise ``ValueError`` naming ``key`` and its allowed values when ``value`` is not one."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{key} must be one of {allowed}; got {value!r}")
