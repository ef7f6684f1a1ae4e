from .build import build_optimizer, pretrain_param_groups  # noqa: F401
from .lars import LARS  # noqa: F401
