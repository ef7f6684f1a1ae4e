from .ssprl import SSPRL  # noqa: F401
from .classifier import MultiLabelClassifier  # noqa: F401
from .dilated_resnet import build_resnet_dilated_backbone  # noqa: F401
from .fcn_head import FCNHead  # noqa: F401
from .semantic_seg import SlidingWindowSemanticSegmentor  # noqa: F401
