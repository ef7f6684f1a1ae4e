"""Figures of learned prototypes: t-SNE maps (paper Figure 2) and cross-scale correspondence
(paper Figure 3). See :func:`visualize_prototypes`."""
from .prototypes import (  # noqa: F401
    ScaleEmbedding,
    compute_prototype_embeddings,
    cross_scale_correspondence,
    plot_cross_scale,
    plot_prototype_tsne,
    save_figure,
    visualize_prototypes,
)
