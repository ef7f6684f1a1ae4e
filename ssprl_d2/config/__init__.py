"""Config of every ssprl_d2 job: the keys (:mod:`.defaults`), their allowed values
(:mod:`.choices`), which job a config describes (:mod:`.tasks`) and the start-up validation
(:mod:`.validate`). The bottom layer of the package: it imports nothing else of ssprl_d2."""
from .choices import check_choice  # noqa: F401
from .defaults import RENAMED_KEYS, add_ssprl_config  # noqa: F401
from .tasks import (  # noqa: F401
    TASK_CLASSIFY,
    TASK_DETECT,
    TASK_PRETRAIN,
    TASK_SEGMENT,
    TASKS,
    task_of,
)
from .validate import validate_config  # noqa: F401
