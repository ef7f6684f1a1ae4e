"""Fast linear evaluation: run the frozen backbone once, train the linear head on cached features.

In linear mode the backbone is a fixed function (weights and BatchNorm statistics frozen), so the
head can be trained on stored pooled features instead of re-running the backbone every step. The
head, optimizer (:func:`build_classifier_optimizer`), lr schedule (Detectron2's
``build_lr_scheduler``), batch size, iteration count (from SOLVER.EPOCHS) and loss are those of
the standard Trainer run; only the augmentation differs: by default every training image is seen
through the test transform (resize + center crop); with FAST_LINEAR.TRAIN_AUG_PASSES = k > 0 the
features of k random-crop + flip views are stored and each step draws one of them per image.
"""
import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader
from detectron2.evaluation import print_csv_format
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from torch import nn

from ssprl_d2.checkpoint import SSPRLCheckpointer, read_weights_file
from ssprl_d2.data.classification_loader import MultiLabelDatasetMapper
from ssprl_d2.data.multilabel import get_multilabel_test_dicts, get_multilabel_train_dicts
from ssprl_d2.evaluation import MultiLabelEvaluator
from ssprl_d2.evaluation.knn import knn_multilabel_map
from ssprl_d2.modeling.classifier import multilabel_bce_loss
from ssprl_d2.solver.classification import build_classifier_optimizer

logger = logging.getLogger(__name__)

Features = Tuple[torch.Tensor, torch.Tensor, List]  # (N, D) features, (N, C) labels, ids


@torch.no_grad()
def extract_features(model: nn.Module, data_loader) -> Optional[Features]:
    """Pooled backbone features of every image of a finite loader, gathered on the main process.

    Returns:
        (features (N, D) float32, labels (N, C) float32, image ids) on the main process, None on
        the others.
    """
    model.eval()
    feats, labels, ids = [], [], []
    for batch in data_loader:
        feats.append(model.features_of_inputs(batch).float().cpu())
        labels.append(torch.stack([x["labels"] for x in batch]).float())
        ids.extend(x.get("image_id") for x in batch)
    parts = comm.gather((feats, labels, ids), dst=0)
    if not comm.is_main_process():
        return None
    feats = [f for p in parts for f in p[0]]
    labels = [lab for p in parts for lab in p[1]]
    ids = [i for p in parts for i in p[2]]
    return torch.cat(feats), torch.cat(labels), ids


def train_linear_head(
    head: nn.Linear,
    features: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler,
    max_iter: int,
    batch_size: int,
    ignore_value: float = -1,
    seed: int = 0,
    log_period: int = 100,
) -> List[float]:
    """Train ``head`` on cached features, one optimizer and scheduler step per iteration.

    Batches walk through a fresh random permutation of the images every epoch (an epoch may end
    inside a batch, like Detectron2's TrainingSampler). With several views per image, each
    sample takes one of its views at random.

    Args:
        head: the linear layer being trained (its parameters are in ``optimizer``).
        features: (V, N, D) features of V views of N images, on the training device.
        labels: (N, C) targets (1 / 0 / ignore_value), on the same device.
        optimizer, scheduler: stepped once per iteration.
        max_iter: number of iterations; batch_size: images per iteration.
        ignore_value: target value left out of the loss.
        seed: seed of the sampling order.
        log_period: log the loss every this many iterations.

    Returns:
        the loss of every iteration.
    """
    num_views, num_images = features.shape[:2]
    gen = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    losses = []
    head.train()
    for it in range(max_iter):
        while order.numel() < batch_size:
            order = torch.cat([order, torch.randperm(num_images, generator=gen)])
        idx, order = order[:batch_size], order[batch_size:]
        views = torch.randint(num_views, (batch_size,), generator=gen)
        x = features[views.to(features.device), idx.to(features.device)]  # (B, D)
        loss = multilabel_bce_loss(head(x), labels[idx.to(labels.device)], ignore_value)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if log_period and ((it + 1) % log_period == 0 or it + 1 == max_iter):
            lr = optimizer.param_groups[0]["lr"]
            logger.info(
                f"[fast linear] iter {it + 1}/{max_iter} loss_cls {losses[-1]:.4f} lr {lr:.5g}"
            )
    return losses


def _cache_key(cfg: CfgNode, split: str, dataset: str, num_images: int, is_train: bool) -> str:
    weights = cfg.MODEL.WEIGHTS
    stamp = os.path.getmtime(weights) if weights and os.path.isfile(weights) else None
    content = {
        "weights": weights, "stamp": stamp, "dataset": dataset, "n": num_images, "split": split,
        "train_transform": is_train, "input": cfg.INPUT.CLASSIFICATION, "format": cfg.INPUT.FORMAT,
        "backbone": cfg.MODEL.BACKBONE, "resnets": cfg.MODEL.RESNETS,
        "feature": cfg.MODEL.CLASSIFIER.IN_FEATURE, "subset": cfg.DATASETS.SSPRL,
        "passes": cfg.MODEL.CLASSIFIER.FAST_LINEAR.TRAIN_AUG_PASSES,
        "pixel": [cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD], "seed": cfg.SEED,
    }
    blob = json.dumps(content, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:16]


def _features_of(
    cfg: CfgNode, model: nn.Module, dicts: List[Dict], is_train: bool, cache_file: Optional[str]
) -> Optional[Features]:
    if cache_file and PathManager.exists(cache_file):
        logger.info(f"[fast linear] reusing cached features {cache_file}")
        if comm.is_main_process():
            data = read_weights_file(PathManager.get_local_path(cache_file))
            return data["features"], data["labels"], data["image_ids"]
        return None
    mapper = MultiLabelDatasetMapper(cfg, is_train=is_train, skip_unreadable=is_train)
    loader = build_detection_test_loader(
        dicts,
        mapper=mapper,
        batch_size=cfg.MODEL.CLASSIFIER.FAST_LINEAR.EXTRACT_BATCH_SIZE,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
    result = extract_features(model, loader)
    if cache_file and result is not None:
        PathManager.mkdirs(os.path.dirname(cache_file))
        with PathManager.open(cache_file, "wb") as f:
            torch.save({"features": result[0], "labels": result[1], "image_ids": result[2]}, f)
    return result


def _knn_of_cached_features(
    cfg: CfgNode, memory, memory_labels, queries, query_labels, name: str
) -> float:
    """The weighted kNN probe (TEST.KNN.K / TEMPERATURE) on the same cached features as the
    linear head (the first training view), logged and written to
    ``OUTPUT_DIR/inference/<name>/knn_results.json``."""
    k, temperature = cfg.TEST.KNN.K, cfg.TEST.KNN.TEMPERATURE
    value = knn_multilabel_map(memory, memory_labels, queries, query_labels, k, temperature)
    logger.info(f"[fast linear] kNN probe on {name} (k={k}, T={temperature}): mAP {value:.2f}")
    out_dir = os.path.join(cfg.OUTPUT_DIR, "inference", name)
    PathManager.mkdirs(out_dir)
    with PathManager.open(os.path.join(out_dir, "knn_results.json"), "w") as f:
        json.dump({"mAP": value, "k": k, "temperature": temperature}, f)
    return value


def run_fast_linear(cfg: CfgNode) -> Dict:
    """Linear evaluation of MODEL.WEIGHTS on cached features; the fast path of a linear config.

    Loads the classifier, extracts the training features (FAST_LINEAR.TRAIN_AUG_PASSES) and the
    features of every DATASETS.TEST set, trains the head with the Trainer's optimizer and schedule,
    evaluates it with :class:`MultiLabelEvaluator` (and a weighted kNN probe on the same
    features, ``knn_results.json``) and saves ``OUTPUT_DIR/model_final.pth``
    (backbone + trained head, loadable with ``--eval-only``).

    Returns:
        the results the Trainer would return: ``{"classification": {...}}`` for one test set,
        ``{dataset: {"classification": {...}}}`` for several; {} on non-main processes.
    """
    fcfg = cfg.MODEL.CLASSIFIER.FAST_LINEAR
    if cfg.MODEL.CLASSIFIER.MODE != "linear":
        raise ValueError("Fast linear evaluation needs MODEL.CLASSIFIER.MODE 'linear'.")
    model = build_model(cfg)
    checkpointer = SSPRLCheckpointer(
        model, save_dir=cfg.OUTPUT_DIR, trust_pickle=cfg.MODEL.WEIGHTS_TRUST_PICKLE
    )
    checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    cache_dir = os.path.join(cfg.OUTPUT_DIR, "fast_linear_cache") if fcfg.CACHE_TO_DISK else None
    if cache_dir and not cfg.MODEL.WEIGHTS and cfg.SEED < 0:
        logger.warning("[fast linear] random-init backbone without a fixed SEED: not caching.")
        cache_dir = None

    start = time.perf_counter()
    train_dicts = get_multilabel_train_dicts(cfg)
    train_name = "+".join(cfg.DATASETS.TRAIN)
    views = []
    passes = [(True, p) for p in range(fcfg.TRAIN_AUG_PASSES)] or [(False, 0)]
    for is_train, p in passes:
        key = _cache_key(cfg, f"train{p}", train_name, len(train_dicts), is_train)
        cache = os.path.join(cache_dir, f"train{p}_{key}.pth") if cache_dir else None
        views.append(_features_of(cfg, model, train_dicts, is_train, cache))
    tests = OrderedDict()
    for name in cfg.DATASETS.TEST:
        dicts = get_multilabel_test_dicts(cfg, name)
        key = _cache_key(cfg, "test", name, len(dicts), False)
        cache = os.path.join(cache_dir, f"test_{name}_{key}.pth") if cache_dir else None
        tests[name] = _features_of(cfg, model, dicts, False, cache)
    extract_s = time.perf_counter() - start
    if not comm.is_main_process():
        comm.synchronize()
        return {}

    device = torch.device(cfg.MODEL.DEVICE)
    features = torch.stack([v[0] for v in views]).to(device)  # (V, N, D)
    labels = views[0][1].to(device)
    logger.info(
        f"[fast linear] features of {features.shape[1]} train images x {features.shape[0]} views "
        f"and {sum(len(t[0]) for t in tests.values())} test images in {extract_s:.1f} s"
    )
    model.to(device)
    optimizer = build_classifier_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    start = time.perf_counter()
    train_linear_head(
        model.head, features, labels, optimizer, scheduler,
        max_iter=cfg.SOLVER.MAX_ITER,
        batch_size=cfg.SOLVER.IMS_PER_BATCH,
        ignore_value=cfg.MODEL.CLASSIFIER.IGNORE_VALUE,
        seed=max(cfg.SEED, 0),
    )
    train_s = time.perf_counter() - start
    logger.info(f"[fast linear] {cfg.SOLVER.MAX_ITER} iterations in {train_s:.1f} s")

    results = OrderedDict()
    model.eval()
    for name, (feats, test_labels, ids) in tests.items():
        with torch.no_grad():
            scores = model.head(feats.to(device)).sigmoid().cpu()
        evaluator = MultiLabelEvaluator(
            name, output_dir=os.path.join(cfg.OUTPUT_DIR, "inference", name), distributed=False
        )
        evaluator.reset()
        evaluator.process(
            [{"labels": lab, "image_id": i} for lab, i in zip(test_labels, ids)],
            [{"scores": s} for s in scores],
        )
        results[name] = evaluator.evaluate()
        logger.info(f"[fast linear] evaluation results for {name}:")
        print_csv_format(results[name])
        _knn_of_cached_features(cfg, features[0], labels, feats, test_labels, name)
    if cfg.OUTPUT_DIR:
        checkpointer.save("model_final")
    comm.synchronize()
    if len(results) == 1:
        return list(results.values())[0]
    return results
