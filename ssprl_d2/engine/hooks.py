"""Trainer hooks: the skipped-image count of every job, and the pre-training hooks (the loss
summary at the end of a run, the kNN multi-label monitor)."""
import json
import logging
import os
import time
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    get_detection_dataset_dicts,
)
from detectron2.data import transforms as T
from detectron2.engine import HookBase
from detectron2.engine.hooks import PeriodicWriter
from detectron2.utils import comm
from detectron2.utils.events import JSONWriter, TensorboardXWriter
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ssprl_d2.data.classification_loader import (
    MultiLabelDatasetMapper,
    build_classification_augmentation,
)
from ssprl_d2.data.multilabel import to_multilabel_dicts
from ssprl_d2.data.image_io import num_skipped_images
from ssprl_d2.evaluation.knn import knn_multilabel_map, pooled_features, subset_indices

logger = logging.getLogger(__name__)


class SkippedImagesLogger(HookBase):
    """Every ``period`` iterations, store the skipped-image count as ``data/skipped_images``.

    The value is the total over all ranks (an all-gather, so every rank must run the hook).
    """

    def __init__(self, period: int = 20):
        """
        Args:
            period: iterations between two reports (and one at the last iteration).
        """
        self._period = period

    def after_step(self):
        iteration = self.trainer.iter
        last = iteration + 1 >= self.trainer.max_iter
        if (iteration + 1) % self._period and not last:
            return
        total = sum(comm.all_gather(num_skipped_images()))
        self.trainer.storage.put_scalar("data/skipped_images", total, smoothing_hint=False)


class LossSummary(HookBase):
    """Logs each loss term at the start and the end of training and writes
    ``OUTPUT_DIR/loss_summary.json`` (first / last window medians of every ``loss*`` term)."""

    def __init__(self, output_dir: str, window: int = 20):
        self.output_dir = output_dir
        self.window = window
        self._first: Dict[str, float] = {}

    def after_step(self):
        storage = self.trainer.storage
        for name, hist in storage.histories().items():
            if name.startswith("loss") or name == "total_loss":
                if name not in self._first and len(hist.values()) >= 1:
                    self._first[name] = hist.values()[0][0]

    def after_train(self):
        if not comm.is_main_process() or not self._first:
            return
        storage = self.trainer.storage
        rows: List[Dict] = []
        for name in sorted(self._first):
            hist = storage.histories().get(name)
            if hist is None:
                continue
            rows.append(
                {
                    "term": name,
                    "start": float(self._first[name]),
                    "end": float(hist.median(self.window)),
                }
            )
        lines = [f"{'term':<18}{'start':>10}{'end':>10}"]
        lines += [f"{r['term']:<18}{r['start']:>10.4f}{r['end']:>10.4f}" for r in rows]
        logger.info("SS-PRL loss summary (end = median of the last %d iters):\n%s",
                    self.window, "\n".join(lines))
        os.makedirs(self.output_dir, exist_ok=True)
        with open(os.path.join(self.output_dir, "loss_summary.json"), "w") as f:
            json.dump({"iterations": self.trainer.iter + 1, "terms": rows}, f, indent=2)


class KNNMonitor(HookBase):
    """Weighted kNN multi-label probe of the backbone during pre-training.

    After every ``period`` iterations and after the last one, the backbone of the (unwrapped)
    model runs in eval mode on a labelled memory-bank dataset and on labelled query datasets
    (classification test transform, the model's pixel mean / std); the pooled features of each
    process's shard are all-gathered, so every process computes the same
    :func:`ssprl_d2.evaluation.knn.knn_multilabel_map`. Logs ``knn/mAP`` (percent; the mean over
    the query sets), ``knn/<dataset>/mAP`` when there are several, ``knn/time_s`` (seconds of
    this evaluation) and ``knn/time_fraction`` (kNN seconds so far / seconds since the start of
    training). The global torch RNG is left as it was, so training draws the same numbers with
    or without the monitor.
    """

    @configurable
    def __init__(
        self,
        *,
        train_dataset: str,
        test_datasets: Sequence[str],
        augmentations: List[T.Augmentation],
        period: int = 1000,
        k: int = 20,
        temperature: float = 0.07,
        max_images: int = 0,
        batch_size: int = 64,
        ignore_value: float = -1,
        num_workers: int = 0,
        cache_images: bool = True,
    ):
        """
        Args:
            train_dataset: registered labelled dataset of the memory bank.
            test_datasets: registered labelled datasets that query it (same classes).
            augmentations: the test transform (e.g. resize + center crop).
            period: evaluate after every ``period`` iterations (0 = after the last one only).
            k, temperature: see :func:`ssprl_d2.evaluation.knn.knn_multilabel_scores`.
            max_images: at most this many images per dataset (see
                :func:`ssprl_d2.evaluation.knn.subset_indices`); 0 = all.
            batch_size: images per feature-extraction batch, per process.
            ignore_value: label value of "ignore" entries (VOC difficult).
            num_workers: loader workers of the pass that reads the images.
            cache_images: keep this process's transformed uint8 images after the first pass.
        """
        self.train_dataset = train_dataset
        self.test_datasets = list(test_datasets)
        self.augmentations = augmentations
        self.period = period
        self.k = k
        self.temperature = temperature
        self.max_images = max_images
        self.batch_size = batch_size
        self.ignore_value = ignore_value
        self.num_workers = num_workers
        self.cache_images = cache_images
        # name -> (slim dataset dicts, (N, C) labels, class names)
        self._data: Dict[str, Tuple[List[Dict], torch.Tensor, List[str]]] = {}
        # name -> this process's batches (uint8 images (B, 3, H, W), dataset indices (B,))
        self._cache: Dict[str, List[Tuple[torch.Tensor, torch.Tensor]]] = {}
        self._total_s = 0.0
        self._start = time.perf_counter()

    @classmethod
    def from_config(cls, cfg) -> Dict:
        c = cfg.TEST.KNN
        return {
            "train_dataset": c.TRAIN_DATASET,
            "test_datasets": list(c.TEST_DATASETS),
            "augmentations": build_classification_augmentation(cfg, is_train=False),
            "period": c.PERIOD,
            "k": c.K,
            "temperature": c.TEMPERATURE,
            "max_images": c.MAX_IMAGES,
            "batch_size": c.BATCH_SIZE,
            "ignore_value": cfg.MODEL.CLASSIFIER.IGNORE_VALUE,
            "num_workers": cfg.DATALOADER.NUM_WORKERS,
            "cache_images": c.CACHE_IMAGES,
        }

    # ------------------------------------------------------------------ hook interface
    def before_train(self):
        self._start = time.perf_counter()
        self.load_datasets()  # a dataset without labels fails now, not after PERIOD iterations
        self._total_s += time.perf_counter() - self._start

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if next_iter == self.trainer.max_iter or (self.period > 0 and next_iter % self.period == 0):
            self._evaluate_and_log()

    # ------------------------------------------------------------------ evaluation
    def load_datasets(self) -> None:
        """Load (once) the dicts and labels of every dataset; check they share their classes."""
        for name in [self.train_dataset] + self.test_datasets:
            if name in self._data:
                continue
            dicts = get_detection_dataset_dicts([name], filter_empty=False)
            classes = MetadataCatalog.get(name).get("thing_classes", None)
            if not classes:
                raise ValueError(
                    f"TEST.KNN: dataset {name!r} has no 'thing_classes': the kNN monitor needs "
                    "labelled (COCO-style) datasets."
                )
            dicts = [dicts[i] for i in subset_indices(len(dicts), self.max_images)]
            dicts = to_multilabel_dicts(dicts, len(classes), self.ignore_value, name)
            for i, d in enumerate(dicts):
                d["knn_index"] = i
            labels = torch.as_tensor(np.stack([d["labels"] for d in dicts]))  # (N, C)
            self._data[name] = (dicts, labels, list(classes))
        train_classes = self._data[self.train_dataset][2]
        for name in self.test_datasets:
            if self._data[name][2] != train_classes:
                raise ValueError(
                    f"TEST.KNN.TEST_DATASETS: {name!r} has other classes than TEST.KNN."
                    f"TRAIN_DATASET {self.train_dataset!r}: {self._data[name][2]} vs "
                    f"{train_classes}."
                )

    def evaluate(self, model: nn.Module) -> Dict[str, float]:
        """kNN mAP (percent) of every query dataset against the memory bank.

        Every process must call it (features are all-gathered); all get the same values.

        Args:
            model: a model (or its DDP wrapper) with ``backbone``, ``in_feature``, ``pixel_mean``
                and ``pixel_std``, like :class:`ssprl_d2.modeling.SSPRL`. Its train / eval mode
                is restored on return.

        Returns:
            {query dataset name: mAP}.
        """
        if isinstance(model, DistributedDataParallel):
            model = model.module
        self.load_datasets()
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=[]):  # loaders draw their seed from the global RNG
                feats = {
                    name: self._features(model, name)
                    for name in [self.train_dataset] + self.test_datasets
                }
        finally:
            model.train(was_training)
        device = model.pixel_mean.device
        _, memory_labels, classes = self._data[self.train_dataset]
        return {
            name: knn_multilabel_map(
                feats[self.train_dataset].to(device), memory_labels, feats[name].to(device),
                self._data[name][1], self.k, self.temperature, classes,
            )
            for name in self.test_datasets
        }

    def _features(self, model: nn.Module, name: str) -> torch.Tensor:
        """(N, D) pooled features of dataset ``name`` in dataset order, on every process."""
        feats, indices = [], []
        with torch.no_grad():
            for images, idx in self._batches(name):
                feats.append(
                    pooled_features(
                        model.backbone, model.in_feature, images, model.pixel_mean, model.pixel_std
                    ).cpu()
                )
                indices.append(idx)
        local = (torch.cat(feats), torch.cat(indices)) if feats else None
        parts = [p for p in comm.all_gather(local) if p is not None]
        all_feats = torch.cat([p[0] for p in parts])  # (N, D)
        all_indices = torch.cat([p[1] for p in parts])  # (N,)
        num_images = len(self._data[name][0])
        if sorted(all_indices.tolist()) != list(range(num_images)):
            raise RuntimeError(f"kNN monitor: the shards of {name!r} do not cover its images once")
        out = torch.empty_like(all_feats)
        out[all_indices] = all_feats
        return out

    def _batches(self, name: str) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """This process's shard of ``name`` as (uint8 images, indices) batches."""
        if name in self._cache:
            yield from self._cache[name]
            return
        dicts, labels, _ = self._data[name]
        mapper = MultiLabelDatasetMapper(
            is_train=False,
            augmentations=self.augmentations,
            image_format="RGB",  # the pre-training mapper's format, which pixel_mean expects
            num_classes=labels.shape[1],
            ignore_value=self.ignore_value,
            skip_unreadable=False,
        )
        loader = build_detection_test_loader(
            dicts, mapper=mapper, batch_size=self.batch_size, num_workers=self.num_workers
        )
        batches = []
        for batch in loader:
            images = torch.stack([x["image"] for x in batch])  # (B, 3, H, W) uint8
            idx = torch.as_tensor([x["knn_index"] for x in batch], dtype=torch.long)
            if self.cache_images:
                batches.append((images, idx))
            yield images, idx
        if self.cache_images:
            self._cache[name] = batches

    def _evaluate_and_log(self) -> None:
        start = time.perf_counter()
        results = self.evaluate(self.trainer.model)
        seconds = time.perf_counter() - start
        self._total_s += seconds
        mean_map = float(np.mean(list(results.values())))
        storage = self.trainer.storage
        if len(results) > 1:
            for name, value in results.items():
                storage.put_scalar(f"knn/{name}/mAP", value, smoothing_hint=False)
        storage.put_scalar("knn/mAP", mean_map, smoothing_hint=False)
        storage.put_scalar("knn/time_s", seconds, smoothing_hint=False)
        fraction = self._total_s / max(time.perf_counter() - self._start, 1e-9)
        storage.put_scalar("knn/time_fraction", fraction, smoothing_hint=False)
        logger.info(
            f"kNN monitor at iteration {self.trainer.iter + 1}: mAP "
            + ", ".join(f"{n} {v:.2f}" for n, v in results.items())
            + f" (k={self.k}, T={self.temperature}; {seconds:.1f} s, {100 * fraction:.1f}% of "
            "training time so far)"
        )
        self._write_now()

    def _write_now(self) -> None:
        """Write the new scalars to metrics.json / TensorBoard at an iteration the writers skip.

        Detectron2's writers keep only the latest value of a scalar between two writes (every
        ``PeriodicWriter`` period), which would drop evaluations of a shorter PERIOD.
        """
        next_iter = self.trainer.iter + 1
        for hook in getattr(self.trainer, "_hooks", ()):
            if not isinstance(hook, PeriodicWriter):
                continue
            if next_iter % hook._period == 0 or next_iter == self.trainer.max_iter:
                continue  # the writer writes this iteration anyway
            for writer in hook._writers:
                if isinstance(writer, (JSONWriter, TensorboardXWriter)):
                    writer.write()


def build_pretrain_hooks(cfg) -> List[HookBase]:
    hooks: List[HookBase] = [LossSummary(cfg.OUTPUT_DIR)]
    if cfg.TEST.KNN.TRAIN_DATASET:  # the kNN monitor is off unless configured
        hooks.append(KNNMonitor(cfg))
    return hooks
