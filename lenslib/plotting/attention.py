"""Attention patterns drawn two ways: circuitsvis's interactive heads view (offline) and a static
plotly grid of heatmaps that also exports to PNG for a code host.

>>> import lenslib
>>> from lenslib.causal.attention import attention_patterns
>>> from lenslib.plotting.attention import attention_heads_view, attention_pattern_figure
>>> model = lenslib.load_model("tiny-llama")
>>> patterns = attention_patterns(model, "abcab", heads=[(1, 0), (1, 1)])
>>> fig = attention_pattern_figure(patterns)
>>> len(fig.data), fig.data[0].z.shape                # one heatmap per head: [dest, src]
(2, (6, 6))
>>> "unpkg.com" in str(attention_heads_view(patterns))   # JavaScript inlined: works offline
False
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from lenslib.plotting.lens import TEMPLATE, clean_token
from lenslib.plotting.views import LensView, render_view, view_token

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from lenslib.causal.attention import AttentionPatterns


def attention_heads_view(patterns: "AttentionPatterns") -> LensView:
    """circuitsvis's ``AttentionHeads`` view: a thumbnail per head; clicking one shows it full
    size, and hovering a token shows where it attends (destination rows, source columns).

    Tokens are HTML-escaped and the JavaScript inlined, as for every view in
    :mod:`lenslib.plotting.views`; the upper triangle (the future, never attended) is masked.
    """
    return render_view(
        "AttentionHeads",
        f"attention patterns of {len(patterns.labels)} head(s) over {len(patterns.str_tokens)} tokens",
        attention=patterns.pattern.double().tolist(),
        tokens=[view_token(t) for t in patterns.str_tokens],
        attentionHeadNames=list(patterns.labels),
        maskUpperTri=True,
    )


def attention_pattern_figure(patterns: "AttentionPatterns", *, columns: int = 4) -> "go.Figure":
    """A grid of heatmaps, one per head: rows are destination positions (top to bottom), columns
    the source positions they read, colour the attention weight (0..1, one scale for all heads).
    The future (above the diagonal) is left blank. Static: it reads as a PNG too.

    Args:
        patterns: an :class:`~lenslib.causal.attention.AttentionPatterns`.
        columns: heatmaps per row of the grid.
    """
    import numpy as np
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    n = len(patterns.labels)
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    tokens = [f"{i}: {clean_token(t)}" for i, t in enumerate(patterns.str_tokens)]
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=list(patterns.labels),
                        horizontal_spacing=0.03, vertical_spacing=0.45 / rows)
    size = len(tokens)
    for i in range(n):
        z = patterns.pattern[i].double().numpy().copy()
        z[np.triu_indices(size, 1)] = np.nan  # the future: blank, not "0 attention"
        fig.add_trace(go.Heatmap(
            z=z, x=tokens, y=tokens, zmin=0, zmax=1, colorscale="Blues", showscale=i == 0,
            colorbar_title="attention", name=patterns.labels[i],
            hovertemplate=f"{patterns.labels[i]}<br>from %{{y}}<br>to %{{x}}<br>weight %{{z:.3f}}<extra></extra>",
        ), row=i // columns + 1, col=i % columns + 1)
    fig.update_yaxes(autorange="reversed")
    for col in range(2, columns + 1):  # destination tokens once per row of the grid
        fig.update_yaxes(showticklabels=False, col=col)
    fig.update_xaxes(tickangle=-60)
    fig.update_layout(
        template=TEMPLATE, height=max(350, 380 * rows), width=max(500, 330 * columns),
        title=(f"Attention patterns of {n} head(s)<br><sup>rows: destination position (the token writing), "
               "columns: source position it reads; blank: the future</sup>"),
        margin_t=110,
    )
    return fig
