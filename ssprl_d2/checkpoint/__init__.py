"""Checkpoint conversion: ResNet weights (ssprl_d2, SS-PRL release, SwAV, MoCo, torchvision) to
Detectron2 ``.pkl`` and torchvision formats. The CLI is ``tools/convert_to_d2.py``."""
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
