"""Data: dataset registration (demo, image folders, COCO jsons), robust image reading, mappers.

Importing this package registers the demo splits ``ssprl_demo_train`` / ``ssprl_demo_val``
(generated lazily, on first load).
"""
from .datasets import (  # noqa: F401  (importing registers the demo splits)
    DEMO_DATASET_NAMES,
    check_datasets_exist,
    prepare_datasets,
    register_coco_json,
    register_demo_datasets,
    register_from_config,
    register_image_folder,
)
from .demo import DEMO_CATEGORIES, generate_demo_dataset, get_demo_root  # noqa: F401
from .image_io import SkippedImagesLogger, num_skipped_images, read_image_or_none  # noqa: F401
from . import multilabel  # noqa: F401  (registers voc_2007_*_cls)
from .build import build_pretrain_train_loader  # noqa: F401
from .detection_mapper import SafeDatasetMapper  # noqa: F401
from .pyramid_mapper import PyramidDatasetMapper  # noqa: F401
