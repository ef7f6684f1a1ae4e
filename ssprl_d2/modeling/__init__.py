from .ssprl import SSPRL  # noqa: F401
from .classifier import MultiLabelClassifier  # noqa: F401
