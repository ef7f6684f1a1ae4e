"""The detection (Mask R-CNN) training mapper: Detectron2's ``DatasetMapper`` that survives
unreadable images.

Detectron2's mapper decodes with ``detection_utils.read_image``, so one zero-byte, truncated or
non-image file (or a decompression bomb) ends the training run, and 16-bit PNGs are clipped at
255. :class:`SafeDatasetMapper` decodes through :func:`ssprl_d2.data.image_io.read_image_or_none`
instead: an unreadable image is logged, counted (``data/skipped_images`` in the training log)
and mapped to ``None``, and Detectron2's ``MapDataset`` retries with another index. A dataset
that is mostly unreadable stops with a clear error (see ``image_io``).
"""
import copy
from typing import Dict, Optional

import numpy as np
import torch
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .image_io import read_image_or_none

__all__ = ["SafeDatasetMapper"]


class SafeDatasetMapper(DatasetMapper):
    """:class:`DatasetMapper` (same constructor and ``from_config``) whose image decoding skips
    unreadable files: ``__call__`` returns ``None`` for them (see the module docstring)."""

    def __call__(self, dataset_dict: Dict) -> Optional[Dict]:
        """
        Args:
            dataset_dict: one image in Detectron2's dataset format (not modified).

        Returns:
            the model input of :class:`DatasetMapper`, or ``None`` for an unreadable image.
        """
        image = read_image_or_none(dataset_dict["file_name"], format=self.image_format)
        if image is None:
            return None
        return self._map_decoded(copy.deepcopy(dataset_dict), image)

    def _map_decoded(self, record: Dict, image: np.ndarray) -> Dict:
        """The rest of :meth:`DatasetMapper.__call__` on an already decoded HWC image: size
        check, augmentation, CHW tensor, proposals and annotations."""
        utils.check_image_size(record, image)
        sem_seg = None
        if "sem_seg_file_name" in record:
            sem_seg = utils.read_image(record.pop("sem_seg_file_name"), "L").squeeze(2)
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        transforms = self.augmentations(aug_input)
        image, sem_seg = aug_input.image, aug_input.sem_seg
        image_shape = image.shape[:2]  # (H, W)
        record["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg is not None:
            record["sem_seg"] = torch.as_tensor(sem_seg.astype("long"))
        if self.proposal_topk is not None:
            utils.transform_proposals(
                record, image_shape, transforms, proposal_topk=self.proposal_topk
            )
        if not self.is_train:
            record.pop("annotations", None)
            return record
        if "annotations" in record:
            self._transform_annotations(record, transforms, image_shape)
        return record
