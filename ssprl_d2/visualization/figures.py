"""The prototype figures: t-SNE maps of the prototypes of one scale (paper Figure 2) and the
cross-scale correspondence of an image-level prototype (paper Figure 3), drawn with matplotlib's
Agg canvas at an exact pixel size.

- Figure 2: t-SNE of the prototype vectors of one scale; the most used prototypes are drawn with
  the views assigned to them that score highest.
- Figure 3: for one image-level prototype (default: the most used), the patch-level prototypes
  most often predicted for the patches of its images, with example patches.
"""
import math
import os
from typing import Optional, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.offsetbox import AnnotationBbox, HPacker, OffsetImage, TextArea, VPacker

from .embeddings import ScaleEmbedding, cross_scale_correspondence, tsne_2d

__all__ = ["plot_cross_scale", "plot_prototype_tsne", "save_figure"]

_DPI = 100


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
    xy = tsne_2d(emb.prototypes, seed)
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
