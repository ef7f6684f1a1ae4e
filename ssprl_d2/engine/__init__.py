"""Training engine: config set-up (:mod:`.setup`), start-up checks (:mod:`.preflight`), the
trainer base (:mod:`.trainer`), one trainer per job (:mod:`.jobs`), AMP step runners
(:mod:`.amp`), hooks (:mod:`.hooks`) and the fast linear evaluation (:mod:`.fast_linear`)."""
from .jobs import (  # noqa: F401
    TRAINERS,
    ClassificationTrainer,
    DetectionTrainer,
    PretrainTrainer,
    SegmentationTrainer,
    build_trainer,
    trainer_class,
)
from .setup import finish_distributed, load_config, setup  # noqa: F401
from .trainer import SSPRLTrainerBase  # noqa: F401
