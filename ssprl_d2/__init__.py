"""SS-PRL (Self-Supervised Pyramid Representation Learning) on Detectron2.

Importing the package registers the meta-architectures and the datasets.
"""
from .config import add_ssprl_config  # noqa: F401
from . import data  # noqa: F401  (registers datasets)
from . import modeling  # noqa: F401  (registers meta-architectures)

__version__ = "0.1.0"
