from .multilabel_evaluator import (  # noqa: F401
    MultiLabelEvaluator,
    average_precision,
    mean_average_precision,
)
