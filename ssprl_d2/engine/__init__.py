from .setup import finish_distributed, setup, task_of  # noqa: F401
from .trainer import Trainer  # noqa: F401
