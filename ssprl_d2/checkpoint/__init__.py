"""Checkpoint conversion: ResNet weights (ssprl_d2, SS-PRL release, SwAV, MoCo, torchvision) to
Detectron2 ``.pkl`` and torchvision formats (the CLI is ``tools/convert_to_d2.py``), and the
checkpointer of every job, which loads weights without running code from them."""
from .checkpointer import (  # noqa: F401
    TRUST_KEY,
    SSPRLCheckpointer,
    read_checkpoint_state_dict,
    read_weights_file,
)
from .convert import (  # noqa: F401
    D2_AUTHOR,
    ConversionError,
    ConversionResult,
    convert_checkpoint,
    convert_state_dict,
    d2_to_torchvision_name,
    expected_resnet_shapes,
    extract_state_dict,
    find_backbone_prefix,
    infer_depth,
    load_checkpoint,
    required_config,
    save_d2_pickle,
    save_torchvision,
    to_d2_model_dict,
    to_torchvision_state_dict,
    torchvision_to_d2_name,
)
