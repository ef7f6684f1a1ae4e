"""Multi-label classification mAP (COCO / VOC protocol) as a Detectron2 evaluator.

mAP is the mean, over the classes with at least one positive image, of the non-interpolated
average precision AP = sum_n (R_n - R_{n-1}) P_n over the distinct score thresholds (the
definition of ``sklearn.metrics.average_precision_score``). Entries labelled "ignore" (VOC
"difficult") are left out of that class's ranking.
"""
import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from tabulate import tabulate

logger = logging.getLogger(__name__)


def average_precision(scores, labels, ignore_value: Optional[float] = -1) -> float:
    """Non-interpolated average precision of one class.

    Args:
        scores: (N,) confidence of each image.
        labels: (N,) 1 (positive), 0 (negative) or ``ignore_value`` (left out).
        ignore_value: label value to leave out; None leaves out every value other than 0 and 1.

    Returns:
        AP in [0, 1]; NaN when no positive remains.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in length")
    if ignore_value is None:
        keep = (labels == 0) | (labels == 1)
    else:
        keep = labels != ignore_value
    scores, labels = scores[keep], labels[keep]
    if not np.all((labels == 0) | (labels == 1)):
        bad = sorted(set(labels[(labels != 0) & (labels != 1)].tolist()))
        raise ValueError(f"labels must be 0, 1 or the ignore value {ignore_value}; found {bad}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or inf")
    num_pos = int(labels.sum())
    if num_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    # One operating point per distinct score: the last position of each run of tied scores.
    last_of_run = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tp = np.cumsum(labels)[last_of_run]
    predicted = last_of_run + 1.0
    precision = tp / predicted
    recall = tp / num_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(
    scores,
    labels,
    ignore_value: Optional[float] = -1,
    class_names: Optional[Sequence[str]] = None,
) -> Tuple[float, np.ndarray]:
    """mAP over the classes that have at least one positive.

    Args:
        scores: (N, C) confidences.
        labels: (N, C) with 1 / 0 / ``ignore_value``.
        ignore_value: see :func:`average_precision`.
        class_names: names used in the warning about classes without positives.

    Returns:
        (mAP in [0, 1] or NaN if no class has a positive, per-class AP (C,) with NaN for the
        excluded classes).
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must be equal (N, C)")
    per_class = np.array(
        [average_precision(s, y, ignore_value) for s, y in zip(scores.T, labels.T)]
    )
    missing = np.flatnonzero(np.isnan(per_class))
    if missing.size:
        names = [class_names[c] if class_names else str(c) for c in missing]
        logger.warning(
            f"{missing.size} class(es) have no positive image and are left out of the mAP: "
            + ", ".join(names)
        )
    if missing.size == per_class.size:
        return float("nan"), per_class
    return float(np.nanmean(per_class)), per_class


class MultiLabelEvaluator(DatasetEvaluator):
    """Collects per-image scores and labels, reports mAP and per-class AP in percent.

    Expects inputs with "labels" (tensor (C,), from the multi-label mapper) and outputs with
    "scores" (tensor (C,)). Returns ``{"classification": {"mAP": ..., "AP-<class>": ...}}``.
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        distributed: bool = True,
        ignore_value: Optional[float] = None,
    ):
        """
        Args:
            dataset_name: registered dataset; its ``thing_classes`` name the classes.
            output_dir: where to save ``multilabel_predictions.pth`` and
                ``multilabel_results.json``; None = don't save.
            distributed: gather the results of all processes to the main one.
            ignore_value: label value that means "ignore"; None (default) ignores every value
                other than 0 and 1, so the evaluator need not know MODEL.CLASSIFIER.IGNORE_VALUE.
        """
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._distributed = distributed
        self._ignore_value = ignore_value
        self._class_names = MetadataCatalog.get(dataset_name).get("thing_classes", None)
        self.reset()

    def reset(self):
        self._scores: List[torch.Tensor] = []
        self._labels: List[torch.Tensor] = []
        self._image_ids: List = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            if "labels" not in inp:
                raise KeyError(
                    "MultiLabelEvaluator needs 'labels' in every input; use the multi-label test "
                    "loader (ssprl_d2.data.classification_loader.build_multilabel_test_loader)."
                )
            self._scores.append(out["scores"].detach().float().cpu())
            self._labels.append(torch.as_tensor(inp["labels"]).float().cpu())
            self._image_ids.append(inp.get("image_id"))

    def evaluate(self):
        scores, labels, image_ids = self._scores, self._labels, self._image_ids
        if self._distributed:
            comm.synchronize()
            scores = list(itertools.chain(*comm.gather(scores, dst=0)))
            labels = list(itertools.chain(*comm.gather(labels, dst=0)))
            image_ids = list(itertools.chain(*comm.gather(image_ids, dst=0)))
            if not comm.is_main_process():
                return {}
        if not scores:
            logger.warning(f"[MultiLabelEvaluator] No predictions for {self._dataset_name}.")
            return {}
        scores_np = torch.stack(scores).numpy()
        labels_np = torch.stack(labels).numpy()
        num_classes = scores_np.shape[1]
        names = self._class_names
        if names is None or len(names) != num_classes:
            names = [str(c) for c in range(num_classes)]
        mean_ap, per_class = mean_average_precision(scores_np, labels_np, self._ignore_value, names)

        results = OrderedDict(mAP=100.0 * mean_ap)
        for name, ap in zip(names, per_class):
            results[f"AP-{name}"] = float(100.0 * ap)
        logger.info(
            f"Multi-label evaluation of {self._dataset_name} ({len(scores)} images, "
            f"{num_classes} classes): mAP = {results['mAP']:.2f}\n"
            + _per_class_table(names, per_class)
        )
        if self._output_dir:
            self._save(scores_np, labels_np, image_ids, results)
        return OrderedDict(classification=results)

    def _save(self, scores, labels, image_ids, results: Dict[str, float]) -> None:
        PathManager.mkdirs(self._output_dir)
        predictions = {
            "scores": torch.from_numpy(scores),
            "labels": torch.from_numpy(labels),
            "image_ids": image_ids,
        }
        path = os.path.join(self._output_dir, "multilabel_predictions.pth")
        with PathManager.open(path, "wb") as f:
            torch.save(predictions, f)
        with PathManager.open(os.path.join(self._output_dir, "multilabel_results.json"), "w") as f:
            json.dump({k: (None if np.isnan(v) else v) for k, v in results.items()}, f, indent=1)


def _per_class_table(names: Sequence[str], per_class: np.ndarray, columns: int = 3) -> str:
    cells = []
    for name, ap in zip(names, per_class):
        cells += [name, "n/a" if np.isnan(ap) else f"{100.0 * ap:.2f}"]
    cols = 2 * min(columns, len(names))
    rows = itertools.zip_longest(*[cells[i::cols] for i in range(cols)])
    headers = ["class", "AP"] * (cols // 2)
    return tabulate(
        rows, headers=headers, tablefmt="pipe", stralign="center", disable_numparse=True
    )
