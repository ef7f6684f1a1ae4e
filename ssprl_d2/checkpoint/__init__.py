"""Checkpoint conversion: ResNet weights (ssprl_d2, SS-PRL release, SwAV, MoCo, torchvision) to
Detectron2 ``.pkl`` and torchvision formats (the CLI is ``tools/convert_to_d2.py``), and the
checkpointer of every job, which loads weights without running code from them
(``safe_load.py`` the one reader of weights files, ``resnet_names.py`` the ResNet names,
``convert.py`` the conversion, ``checkpointer.py`` the checkpointer)."""
from .checkpointer import (  # noqa: F401
    TRUST_KEY,
    SSPRLCheckpointer,
    read_checkpoint_state_dict,
    read_weights_file,
)
from .convert import (  # noqa: F401
    D2_AUTHOR,
    ConversionResult,
    convert_checkpoint,
    convert_state_dict,
    extract_state_dict,
    required_config,
    save_d2_pickle,
    save_torchvision,
    to_d2_model_dict,
    to_torchvision_state_dict,
)
from .resnet_names import (  # noqa: F401
    d2_to_torchvision_name,
    expected_resnet_shapes,
    find_backbone_prefix,
    infer_depth,
    torchvision_to_d2_name,
)
from .safe_load import ConversionError, load_checkpoint  # noqa: F401
