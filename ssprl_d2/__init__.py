"""SS-PRL (Self-Supervised Pyramid Representation Learning) on Detectron2.

Importing the package registers the meta-architectures and the datasets.
"""
import warnings

# fvcore scripts its focal loss with torch.jit.script when imported (through Detectron2), which
# recent PyTorch releases deprecate; the warning is printed twice per process and is not ours.
warnings.filterwarnings(
    "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
)
from .config import add_ssprl_config  # noqa: F401,E402
from . import data  # noqa: F401,E402  (registers datasets)
from . import modeling  # noqa: F401,E402  (registers meta-architectures)

__version__ = "0.1.0"
