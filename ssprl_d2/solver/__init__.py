"""Optimizers: SGD / LARS for pre-training (:mod:`.build`, :mod:`.lars`) and the classifier's
SGD with a separate backbone learning rate (:mod:`.classification`). Each job's trainer picks
its builder (:mod:`ssprl_d2.engine.jobs`)."""
from .build import build_ssprl_optimizer, pretrain_param_groups  # noqa: F401
from .classification import build_classifier_optimizer  # noqa: F401
from .lars import LARS  # noqa: F401
