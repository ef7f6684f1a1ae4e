"""Class-count check of the labelled datasets a classifier trains or is evaluated on."""
from typing import Optional

from detectron2.data import MetadataCatalog


def check_num_classes(dataset_name: str, num_classes: int) -> Optional[int]:
    """Raise if the metadata of ``dataset_name`` lists a class count other than ``num_classes``.

    Returns the dataset's class count, or None when its metadata has no ``thing_classes`` yet
    (COCO jsons fill it in only when loaded; the loaders check again then).
    """
    classes = MetadataCatalog.get(dataset_name).get("thing_classes", None)
    if classes is None:
        return None
    if len(classes) != num_classes:
        raise ValueError(
            f"Dataset {dataset_name!r} has {len(classes)} classes but MODEL.CLASSIFIER.NUM_CLASSES "
            f"is {num_classes}."
        )
    return len(classes)
