"""Prototype scores of the views of images (:class:`ScaleEmbedding`) and the statistics the
figures show: prototype usage, cross-scale correspondence, the 2-D t-SNE layout.

Each view (see :mod:`ssprl_d2.visualization.views`) is embedded by the backbone and the
projection head of its scale (model in eval mode) and assigned to the prototype with the highest
score ``z^T c`` (the argmax of Eq. 1).
"""
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .views import grid_patches, view_thumbnails

__all__ = [
    "ScaleEmbedding",
    "compute_prototype_embeddings",
    "cross_scale_correspondence",
    "tsne_2d",
]


@dataclass
class ScaleEmbedding:
    """Prototype scores of the views of one scale.

    Attributes:
        scale: the scale s (0 = whole image).
        grid: g_s (1 for scale 0).
        prototypes: (K, D) unit prototype vectors.
        scores: (N, K) prototype scores z^T c of the N views.
        image_index: (N,) index of the image each view comes from.
        patch_index: (N,) row-major grid cell of each view (0 at scale 0).
        thumbnails: (N, t, t, 3) uint8 pictures of the views, for drawing.
    """

    scale: int
    grid: int
    prototypes: np.ndarray
    scores: np.ndarray
    image_index: np.ndarray
    patch_index: np.ndarray
    thumbnails: np.ndarray

    @property
    def num_prototypes(self) -> int:
        return self.prototypes.shape[0]

    @property
    def assignments(self) -> np.ndarray:
        """(N,) prototype with the highest score for every view."""
        return self.scores.argmax(axis=1)

    def usage(self) -> np.ndarray:
        """(K,) number of views assigned to every prototype."""
        return np.bincount(self.assignments, minlength=self.num_prototypes)

    def top_views(self, prototype: int, count: int, among: Optional[np.ndarray] = None):
        """Indices of up to ``count`` views assigned to ``prototype`` (restricted to the boolean
        mask ``among``), highest score first."""
        mask = self.assignments == prototype
        if among is not None:
            mask &= among
        idx = np.flatnonzero(mask)
        return idx[np.argsort(-self.scores[idx, prototype], kind="stable")][:count]


def compute_prototype_embeddings(
    model: nn.Module,
    images: Sequence[torch.Tensor],
    crop_size: int,
    grids: Sequence[int],
    pyramid_resize: Sequence[int],
    patch_sizes: Sequence[int],
    scales: Optional[Sequence[int]] = None,
    thumb_size: int = 64,
    batch_size: int = 64,
) -> Dict[int, ScaleEmbedding]:
    """Prototype scores of the deterministic views of ``images`` at the requested scales.

    Args:
        model: an :class:`ssprl_d2.modeling.ssprl.SSPRL` in eval mode.
        images: (3, H, W) uint8 RGB images.
        crop_size: side of the scale-0 view.
        grids, pyramid_resize, patch_sizes: one entry per pyramid scale (INPUT.SSPRL.*).
        scales: scales to compute (default: all).
        thumb_size: side of the stored thumbnails.
        batch_size: views per backbone pass.

    Returns:
        {scale: ScaleEmbedding}.
    """
    model.eval()
    scales = list(range(1 + len(grids))) if scales is None else list(scales)
    out = {}
    for s in scales:
        if s == 0:
            grid, resize, patch = 1, crop_size, crop_size
        else:
            grid, resize, patch = grids[s - 1], pyramid_resize[s - 1], patch_sizes[s - 1]
        views, thumbs, image_index, patch_index = [], [], [], []
        for i, img in enumerate(images):
            views.append(grid_patches(img, grid, resize, patch))
            thumbs.append(view_thumbnails(img, grid, resize, patch, thumb_size))
            image_index += [i] * grid * grid
            patch_index += list(range(grid * grid))
        views = torch.cat(views)  # (N * g * g, 3, p, p)
        z = torch.cat([model.embed_views(v, s) for v in views.split(batch_size)])
        protos = model.prototype_vectors(s).to(z.device)
        out[s] = ScaleEmbedding(
            scale=s,
            grid=grid,
            prototypes=protos.cpu().numpy(),
            scores=(z @ protos.t()).cpu().numpy(),  # (N, K)
            image_index=np.asarray(image_index),
            patch_index=np.asarray(patch_index),
            thumbnails=np.concatenate(thumbs),
        )
    return out


def cross_scale_correspondence(
    emb0: ScaleEmbedding, emb_s: ScaleEmbedding, image_prototype: Optional[int] = None,
    top_k: int = 3,
) -> Dict:
    """Patch-level prototypes most often predicted for the patches of the images of one
    image-level prototype.

    Args:
        emb0: scale-0 embedding (one view per image).
        emb_s: a pyramid-scale embedding of the same images.
        image_prototype: the scale-0 prototype; default: the most used one.
        top_k: number of patch prototypes returned.

    Returns:
        {"image_prototype": k, "images": image indices assigned to k, "patch_prototypes":
        [(j, count), ...] most frequent first, "num_patches": patches of those images}.
    """
    usage0 = emb0.usage()
    if image_prototype is None:
        image_prototype = int(np.argmax(usage0))
    images = emb0.image_index[emb0.assignments == image_prototype]
    among = np.isin(emb_s.image_index, images)
    counts = np.bincount(emb_s.assignments[among], minlength=emb_s.num_prototypes)
    ranked = [int(j) for j in np.argsort(-counts, kind="stable") if counts[j] > 0][:top_k]
    return {
        "image_prototype": int(image_prototype),
        "images": [int(i) for i in images],
        "patch_prototypes": [(j, int(counts[j])) for j in ranked],
        "num_patches": int(among.sum()),
    }


def tsne_2d(points: np.ndarray, seed: int) -> np.ndarray:
    """(n, 2) t-SNE layout of ``points`` (n, D); fewer than 3 points are laid out on a line."""
    # sklearn is an optional heavy dependency, needed only to draw the t-SNE maps.
    from sklearn.manifold import TSNE

    n = points.shape[0]
    if n < 3:
        return np.stack([np.arange(n, dtype=float), np.zeros(n)], axis=1)
    perplexity = float(max(1.0, min(30.0, (n - 1) / 3.0)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(points.astype(np.float64))
