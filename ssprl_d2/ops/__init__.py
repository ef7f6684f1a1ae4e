"""Ops: batched torch image operations shared by the data loaders and the models.

The photometric augmentation of SwAV / SS-PRL: per-crop parameters
(:mod:`.photometric_params`), colour ops (:mod:`.color`), Gaussian blur (:mod:`.blur`) and the
batched pipeline that applies them (:mod:`.photometric`). Layer 1: imports only torch, numpy
and :mod:`ssprl_d2.config`, so both :mod:`ssprl_d2.data` (the loader-side augmentation) and
:mod:`ssprl_d2.modeling` (the device-side one) use it.
"""
from .photometric import (  # noqa: F401
    NUM_PARAMS,
    apply_photometric,
    gaussian_blur,
    sample_photometric_params,
    truncate_to_uint8,
)
