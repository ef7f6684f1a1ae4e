"""The project's jobs and which one a config describes (from its meta-architecture)."""
from detectron2.config import CfgNode

TASK_PRETRAIN = "pretrain"
TASK_CLASSIFY = "classification"
TASK_DETECT = "detection"
TASK_SEGMENT = "segmentation"
TASKS = (TASK_PRETRAIN, TASK_CLASSIFY, TASK_DETECT, TASK_SEGMENT)

# Meta-architecture -> job; any other meta-architecture (GeneralizedRCNN, ...) is detection.
ARCH_TASKS = {
    "SSPRL": TASK_PRETRAIN,
    "MultiLabelClassifier": TASK_CLASSIFY,
    "SemanticSegmentor": TASK_SEGMENT,
    "SlidingWindowSemanticSegmentor": TASK_SEGMENT,
}


def task_of(cfg: CfgNode) -> str:
    """Which of the project's jobs a config describes, from ``MODEL.META_ARCHITECTURE``."""
    return ARCH_TASKS.get(cfg.MODEL.META_ARCHITECTURE, TASK_DETECT)
