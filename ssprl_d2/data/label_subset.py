"""Label subsets for semi-supervised fine-tuning: the image ids a classifier trains on.

A subset is a file of image ids (a json list, or one id per line). :func:`sample_label_subset`
draws one deterministically; :func:`apply_label_subset` filters the training dicts by a file,
drawing and writing it first when it is missing (``DATASETS.CLASSIFICATION.LABEL_SUBSET*``).
Ids compare as normalised strings ("000012" == 12).
"""
import json
import logging
import os
import tempfile
from typing import Dict, List, Sequence

import numpy as np

logger = logging.getLogger(__name__)


def _norm_id(image_id) -> str:
    s = str(image_id).strip()
    return str(int(s)) if s.isdigit() else s


def _id_sort_key(image_id):
    s = _norm_id(image_id)
    return (0, int(s), "") if s.isdigit() else (1, 0, s)


def sample_label_subset(image_ids: Sequence, fraction: float, seed: int = 0) -> List:
    """Deterministic subset: the ids sorted (numerically when they are numbers), then
    ``numpy.random.RandomState(seed).choice(N, round(fraction * N), replace=False)``.

    Returns:
        the chosen ids, sorted the same way.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"Label-subset fraction must be in (0, 1]: {fraction}")
    ids = sorted(set(image_ids), key=_id_sort_key)
    size = max(1, int(round(fraction * len(ids))))
    chosen = np.random.RandomState(seed).choice(len(ids), size=size, replace=False)
    return sorted((ids[i] for i in chosen), key=_id_sort_key)


def load_label_subset(path: str) -> List:
    """Image ids from a json list or a text file with one id per line ('#' starts a comment)."""
    with open(path) as f:
        text = f.read()
    if text.lstrip().startswith("["):
        return list(json.loads(text))
    return [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]


def write_label_subset(path: str, image_ids: Sequence) -> None:
    """Write one id per line, atomically (concurrent writers of the same subset are harmless)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".subset-")
    with os.fdopen(fd, "w") as f:
        f.writelines(f"{i}\n" for i in image_ids)
    os.replace(tmp, path)


def filter_by_label_subset(
    dataset_dicts: List[Dict], image_ids: Sequence, source: str = ""
) -> List[Dict]:
    """Keep the dicts whose "image_id" is in ``image_ids`` (compared as normalised strings)."""
    wanted = {_norm_id(i) for i in image_ids}
    kept = [d for d in dataset_dicts if _norm_id(d["image_id"]) in wanted]
    if not kept:
        raise ValueError(f"No training image is in the label subset {source}.")
    missing = len(wanted) - len({_norm_id(d["image_id"]) for d in kept})
    if missing:
        logger.warning(f"{missing} ids of the label subset {source} are not in the training set.")
    return kept


def resolve_subset_path(path: str) -> str:
    """Absolute path of a label-subset file: as given, else relative to the working directory if
    it exists there, else relative to the project root (where configs/ lives)."""
    if os.path.isabs(path) or os.path.exists(path):
        return os.path.abspath(path)
    project_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    candidate = os.path.join(project_root, path)
    first = path.replace("\\", "/").split("/")[0]
    if os.path.exists(candidate) or os.path.isdir(os.path.join(project_root, first)):
        return candidate
    return os.path.abspath(path)


def apply_label_subset(
    dataset_dicts: List[Dict], path: str, fraction: float = 0.0, seed: int = 0
) -> List[Dict]:
    """Filter ``dataset_dicts`` by the subset file ``path``, creating it first (see
    :func:`sample_label_subset`) when it is missing and ``fraction`` > 0."""
    path = resolve_subset_path(path)
    if not os.path.exists(path):
        if fraction <= 0:
            raise FileNotFoundError(
                f"Label subset {path} does not exist; create it with tools/make_label_subset.py "
                "or set DATASETS.CLASSIFICATION.LABEL_SUBSET_FRACTION to draw it on first use."
            )
        ids = sample_label_subset([d["image_id"] for d in dataset_dicts], fraction, seed)
        write_label_subset(path, ids)
        logger.info(
            f"Label subset {path} was missing: drew {len(ids)} of {len(dataset_dicts)} image ids "
            f"(fraction {fraction}, seed {seed}) and saved it; later runs reuse this file."
        )
    kept = filter_by_label_subset(dataset_dicts, load_label_subset(path), path)
    logger.info(f"Label subset {path}: training on {len(kept)} of {len(dataset_dicts)} images.")
    return kept
