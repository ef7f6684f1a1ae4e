"""Figures of learned prototypes: t-SNE maps (paper Figure 2) and cross-scale correspondence
(paper Figure 3). See :func:`visualize_prototypes` (``prototypes.py``, the driver); ``views.py``
the deterministic views, ``embeddings.py`` their prototype scores and statistics, ``figures.py``
the drawing."""
from .embeddings import (  # noqa: F401
    ScaleEmbedding,
    compute_prototype_embeddings,
    cross_scale_correspondence,
)
from .figures import plot_cross_scale, plot_prototype_tsne, save_figure  # noqa: F401
from .prototypes import visualize_prototypes  # noqa: F401
