"""Data: dataset registration (demo, image folders, COCO jsons), robust image reading, mappers.

Importing this package registers the demo splits ``ssprl_demo_train`` / ``ssprl_demo_val``
(generated lazily, on first load), their semantic split ``ssprl_demo_sem_seg_{train,val}`` and
VOC 2012 aug semantic segmentation ``voc_2012_sem_seg_{train_aug,val}``.
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
from .image_io import num_skipped_images, read_image_or_none  # noqa: F401
from . import voc_classification  # noqa: F401  (registers voc_2007_*_cls)
from .build import build_pretrain_train_loader  # noqa: F401
from .detection_mapper import SafeDatasetMapper  # noqa: F401
from .pyramid_mapper import PyramidDatasetMapper  # noqa: F401
from . import demo_semantic, voc_segmentation  # noqa: F401  (register the semantic splits)
from .segmentation_mapper import SemSegDatasetMapper  # noqa: F401
