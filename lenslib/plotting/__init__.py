"""Figures of lenslib's results: plotly figures, circuitsvis views, nothing shown.

>>> import lenslib
>>> model = lenslib.load_model("tiny-llama")
>>> fig = lenslib.plotting.lens_grid(lenslib.logit_lens(model, "Hello", k=3))
>>> type(fig).__name__, fig.data[0].z.shape      # [layer, pos]: colour = entropy (nats)
('Figure', (3, 6))

Every function takes a result (a :class:`lenslib.LensResult`, :class:`lenslib.Attribution`, ...)
and returns a ``plotly.graph_objects.Figure``; circuitsvis views live in
:mod:`lenslib.plotting.views` (and :func:`attention_heads_view`, beside its static twin
:func:`attention_pattern_figure`). :func:`configure_static_images` makes notebooks save a PNG beside
each interactive figure.
"""

from lenslib.plotting.attention import attention_heads_view, attention_pattern_figure
from lenslib.plotting.attribution import (
    component_lens_figure,
    component_patching_figure,
    contributions_figure,
    head_patching_heatmap,
    patching_heatmap,
)
from lenslib.plotting.lens import (
    clean_token,
    configure_static_images,
    cross_model_trajectories,
    lens_grid,
    recall_trajectories,
    stat_profile,
    target_trajectory,
)

__all__ = [
    "attention_heads_view",
    "attention_pattern_figure",
    "clean_token",
    "component_lens_figure",
    "component_patching_figure",
    "configure_static_images",
    "contributions_figure",
    "cross_model_trajectories",
    "head_patching_heatmap",
    "lens_grid",
    "patching_heatmap",
    "recall_trajectories",
    "stat_profile",
    "target_trajectory",
]
