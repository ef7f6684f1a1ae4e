"""Prototype visualisations of an SS-PRL checkpoint (the paper's Figures 2 and 3).

Every image is seen through deterministic views, so a figure is a function of the checkpoint and
the dataset: scale 0 uses the center square of the image resized to the first scale-0 crop size;
pyramid scale s cuts the center square, resized to ``PYRAMID_RESIZE[s-1]``, into its g_s x g_s
grid and takes the center ``PATCH_SIZES[s-1]`` crop of every cell. Each view is embedded by the
backbone and the projection head of its scale (model in eval mode) and assigned to the prototype
with the highest score ``z^T c`` (the argmax of Eq. 1).

- Figure 2: t-SNE of the prototype vectors of one scale; the most used prototypes are drawn with
  the views assigned to them that score highest.
- Figure 3: for one image-level prototype (default: the most used), the patch-level prototypes
  most often predicted for the patches of its images, with example patches.
"""
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.offsetbox import AnnotationBbox, HPacker, OffsetImage, TextArea, VPacker
from torch import nn


__all__ = [
    "ScaleEmbedding",
    "center_square",
    "compute_prototype_embeddings",
    "cross_scale_correspondence",
    "grid_patches",
    "plot_cross_scale",
    "plot_prototype_tsne",
    "resize_square",
    "save_figure",
    "visualize_prototypes",
]

_DPI = 100


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


# ------------------------------------------------------------------------------------ views
def center_square(image: torch.Tensor) -> torch.Tensor:
    """The largest centered square of a (3, H, W) image."""
    h, w = image.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[..., top : top + side, left : left + side]


def resize_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a (3, h, w) uint8 image to (3, size, size) uint8 (antialiased bilinear)."""
    x = image.unsqueeze(0).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8)[0]


def _cell_boxes(grid: int, resize: int, patch: int) -> List[Tuple[int, int]]:
    """(top, left) of the center ``patch`` crop of every cell, row-major."""
    cell = resize // grid
    off = (cell - patch) // 2
    return [(r * cell + off, c * cell + off) for r in range(grid) for c in range(grid)]


def grid_patches(image: torch.Tensor, grid: int, resize: int, patch: int) -> torch.Tensor:
    """Center patches of the g x g grid cells of the resized center square.

    Args:
        image: (3, H, W) uint8.
        grid: g; resize: side of the resized square; patch: side of each patch.

    Returns:
        (g * g, 3, patch, patch) uint8, row-major.
    """
    square = resize_square(center_square(image), resize)
    return torch.stack(
        [square[:, t : t + patch, l : l + patch] for t, l in _cell_boxes(grid, resize, patch)]
    )


def _thumbnails(image: torch.Tensor, grid: int, resize: int, patch: int, size: int):
    """Pictures of the views of one image at ``size`` px, cut from a finer resize so small
    patches stay sharp. Returns (g * g, size, size, 3) uint8 numpy."""
    factor = max(1, math.ceil(size / patch))
    fine = resize_square(center_square(image), resize * factor)
    thumbs = []
    for t, l in _cell_boxes(grid, resize, patch):
        crop = fine[:, t * factor : (t + patch) * factor, l * factor : (l + patch) * factor]
        thumbs.append(resize_square(crop, size).permute(1, 2, 0).numpy())
    return np.stack(thumbs)


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
            thumbs.append(_thumbnails(img, grid, resize, patch, thumb_size))
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


# ------------------------------------------------------------------------------- figure 2
def _tsne(points: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE

    n = points.shape[0]
    if n < 3:
        return np.stack([np.arange(n, dtype=float), np.zeros(n)], axis=1)
    perplexity = float(max(1.0, min(30.0, (n - 1) / 3.0)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(points.astype(np.float64))


def _new_figure(width: int, height: int) -> Figure:
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _zoom_for(thumb_size: int, target_px: float) -> float:
    # OffsetImage draws image pixels at zoom * dpi / 72 figure pixels.
    return target_px / (thumb_size * _DPI / 72.0)


def _card(thumbs: Sequence[np.ndarray], label: str, target_px: float, color) -> VPacker:
    zoom = _zoom_for(thumbs[0].shape[0], target_px) if len(thumbs) else 1.0
    row = HPacker(children=[OffsetImage(t, zoom=zoom) for t in thumbs], pad=0, sep=2)
    text = TextArea(label, textprops=dict(color=color, fontsize=max(6, target_px / 7)))
    return VPacker(children=[text, row], align="center", pad=0, sep=1)


def plot_prototype_tsne(
    emb: ScaleEmbedding,
    num_prototypes: int = 12,
    per_prototype: int = 4,
    size: int = 1200,
    seed: int = 0,
    title: str = "",
) -> Figure:
    """Figure 2: t-SNE map of the prototypes of one scale with example views.

    All K prototypes are points (area ~ number of assigned views); the ``num_prototypes`` most
    used ones carry a card of their ``per_prototype`` highest-scoring views, placed on a ring
    around the map in the order of their angle, so cards never cover the points.

    Returns:
        a ``size`` x ``size`` pixel figure.
    """
    fig = _new_figure(size, size)
    ax = fig.add_axes((0.01, 0.01, 0.98, 0.94))
    xy = _tsne(emb.prototypes, seed)
    xy = 1.2 * (xy - xy.mean(0)) / (np.abs(xy - xy.mean(0)).max() + 1e-9)  # into [-1.2, 1.2]
    usage = emb.usage()
    chosen = [k for k in np.argsort(-usage, kind="stable") if usage[k] > 0][:num_prototypes]
    cmap = matplotlib.colormaps["tab20"]
    marker = 20 + 400 * usage / max(1, usage.max())
    ax.scatter(xy[:, 0], xy[:, 1], s=marker, c="0.75", edgecolors="0.4", linewidths=0.5)
    angles = np.arctan2(xy[chosen, 1], xy[chosen, 0]) if chosen else np.zeros(0)
    order = [chosen[i] for i in np.argsort(angles, kind="stable")]
    n = max(1, len(order))
    thumb_px = size * 0.17 / max(1, per_prototype)
    for slot, k in enumerate(order):
        color = cmap(slot % 20)
        ax.scatter(xy[k, 0], xy[k, 1], s=marker[k], color=color, edgecolors="k", linewidths=0.8)
        ax.annotate(str(k), xy[k], fontsize=8, ha="center", va="center")
        views = emb.top_views(k, per_prototype)
        theta = -math.pi + (slot + 0.5) * 2 * math.pi / n
        # Slots on a square ring spread the wide cards more evenly than a circle.
        c, s = math.cos(theta), math.sin(theta)
        box_xy = (1.8 * c / max(abs(c), abs(s)), 1.75 * s / max(abs(c), abs(s)))
        card = _card([emb.thumbnails[v] for v in views], f"#{k} ({usage[k]})", thumb_px, color)
        ax.add_artist(
            AnnotationBbox(
                card, xy[k], xybox=box_xy, xycoords="data", boxcoords="data",
                bboxprops=dict(edgecolor=color, linewidth=1.5),
                arrowprops=dict(arrowstyle="-", color=color, linewidth=1.0),
            )
        )
    ax.set_xlim(-2.45, 2.45)
    ax.set_ylim(-2.3, 2.3)
    ax.set_xticks([])
    ax.set_yticks([])
    used = int((usage > 0).sum())
    fig.suptitle(
        title or f"Scale {emb.scale} prototypes (t-SNE): {used}/{emb.num_prototypes} used by "
        f"{len(emb.scores)} views",
        fontsize=max(8, size / 80),
    )
    return fig


# ------------------------------------------------------------------------------- figure 3
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


def plot_cross_scale(
    emb0: ScaleEmbedding,
    emb_s: ScaleEmbedding,
    image_prototype: Optional[int] = None,
    top_k: int = 3,
    per_prototype: int = 4,
    size: int = 1200,
) -> Figure:
    """Figure 3: one image-level prototype, its top patch-level prototypes and example patches
    (taken from the images of that image-level prototype).

    Returns:
        a ``size`` x ``size`` pixel figure.
    """
    corr = cross_scale_correspondence(emb0, emb_s, image_prototype, top_k)
    k0 = corr["image_prototype"]
    rows = 1 + max(1, len(corr["patch_prototypes"]))
    cols = 1 + per_prototype
    fig = _new_figure(size, size)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    label_size = max(7, size / 90)
    in_images = np.isin(emb_s.image_index, corr["images"])

    def show_row(r, thumbs, text):
        axes[r, 0].text(0.5, 0.5, text, ha="center", va="center", fontsize=label_size, wrap=True)
        for c, thumb in enumerate(thumbs[:per_prototype]):
            axes[r, c + 1].imshow(thumb)

    views0 = emb0.top_views(k0, per_prototype)
    show_row(0, [emb0.thumbnails[v] for v in views0],
             f"image-level\nprototype #{k0}\n({len(corr['images'])} images)")
    for r, (j, count) in enumerate(corr["patch_prototypes"], start=1):
        views = emb_s.top_views(j, per_prototype, among=in_images)
        share = 100.0 * count / max(1, corr["num_patches"])
        show_row(r, [emb_s.thumbnails[v] for v in views],
                 f"scale-{emb_s.scale} patch\nprototype #{j}\n({share:.0f}% of patches)")
    if not corr["patch_prototypes"]:
        axes[1, 0].text(0.5, 0.5, "no patches", ha="center", va="center", fontsize=label_size)
    fig.suptitle(
        f"Cross-scale correspondence: image prototype #{k0} -> top scale-{emb_s.scale} patch "
        "prototypes", fontsize=max(8, size / 80),
    )
    return fig


def save_figure(fig: Figure, path: str) -> str:
    """Write ``fig`` as PNG at its exact pixel size (no tight bounding box)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=_DPI, format="png")
    return path


# ------------------------------------------------------------------------------- driver
def _read_images(dataset: str, max_images: int) -> List[torch.Tensor]:
    from detectron2.data import DatasetCatalog
    from detectron2.data.detection_utils import read_image

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
