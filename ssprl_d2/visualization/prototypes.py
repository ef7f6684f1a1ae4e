"""Prototype visualisations of an SS-PRL checkpoint (the paper's Figures 2 and 3): the driver.

Every image is seen through deterministic views (:mod:`ssprl_d2.visualization.views`), so a
figure is a function of the checkpoint and the dataset. The views are embedded and assigned to
prototypes (:mod:`ssprl_d2.visualization.embeddings`) and drawn
(:mod:`ssprl_d2.visualization.figures`). See :func:`visualize_prototypes`.
"""
import os
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from torch import nn

from .embeddings import compute_prototype_embeddings, cross_scale_correspondence
from .figures import plot_cross_scale, plot_prototype_tsne, save_figure

__all__ = ["visualize_prototypes"]


def _read_images(dataset: str, max_images: int) -> List[torch.Tensor]:
    dicts = DatasetCatalog.get(dataset)
    if max_images > 0:
        dicts = dicts[:max_images]
    images = []
    for d in dicts:
        img = read_image(d["file_name"], format="RGB")
        images.append(torch.from_numpy(np.array(img)).permute(2, 0, 1))
    return images


def visualize_prototypes(
    model: nn.Module,
    cfg,
    dataset: str,
    output_dir: str,
    size: int = 1200,
    per_prototype: int = 4,
    num_prototypes: int = 12,
    image_prototype: Optional[int] = None,
    top_k: int = 3,
    max_images: int = 0,
    seed: int = 0,
) -> Dict[str, object]:
    """Write the Figure-2 t-SNE maps (scale 0 and the finest scale) and the Figure-3
    cross-scale figure of a trained SS-PRL ``model`` (with its config ``cfg``; see
    :func:`ssprl_d2.engine.setup.load_ssprl_checkpoint`), evaluated on ``dataset``.

    Returns:
        {"files": [png paths], "usage": {scale: [...]}, "cross_scale": correspondence dict
        (absent for a global-only model)}.
    """
    images = _read_images(dataset, max_images)
    if not images:
        raise ValueError(f"Dataset {dataset} has no images")
    inp = cfg.INPUT.SSPRL
    finest = len(inp.GRIDS)
    scales = [0] + ([finest] if finest > 0 else [])
    embs = compute_prototype_embeddings(
        model, images, inp.CROP_SIZES[0], inp.GRIDS, inp.PYRAMID_RESIZE, inp.PATCH_SIZES,
        scales=scales,
    )
    files, summary = [], {"usage": {}, "num_images": len(images)}
    for s in scales:
        fig = plot_prototype_tsne(embs[s], num_prototypes, per_prototype, size, seed)
        files.append(save_figure(fig, os.path.join(output_dir, f"prototypes_tsne_scale{s}.png")))
        summary["usage"][s] = embs[s].usage().tolist()
    if finest > 0:
        fig = plot_cross_scale(embs[0], embs[finest], image_prototype, top_k, per_prototype, size)
        files.append(save_figure(fig, os.path.join(output_dir, "cross_scale_prototypes.png")))
        summary["cross_scale"] = cross_scale_correspondence(
            embs[0], embs[finest], image_prototype, top_k
        )
    summary["files"] = files
    return summary
