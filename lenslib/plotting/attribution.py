"""Figures of direct logit attribution and activation patching (plotly; never shown here).

>>> import lenslib
>>> from lenslib.causal.attribution import attribute
>>> from lenslib.plotting.attribution import contributions_figure
>>> model = lenslib.load_model("tiny-llama")
>>> fig = contributions_figure(attribute(model, "abc", target="d"))
>>> [trace.name for trace in fig.data]      # one bar trace per kind of component
['attention', 'MLP']
>>> len(fig.data[0].y)                       # one bar per block
2
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lenslib.causal.attribution import LINEARISATION
from lenslib.plotting.lens import TEMPLATE, clean_token

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from lenslib.causal.attribution import Attribution
    from lenslib.causal.patching import PatchResult


def contributions_figure(result: "Attribution", *, top: int = 5) -> "go.Figure":
    """Grouped bars: each block's attention and MLP contribution to the logit (difference).

    The embeddings and the constant (``b_U``) are stated in the title with the total; the
    ``top`` components by absolute contribution are named in the subtitle. With per-head
    results the heads of a block are summed into its attention bar (named individually in the
    top list). Units: logits.
    """
    import plotly.graph_objects as go

    by_layer = result.by_layer()  # [block, 2]
    blocks = list(range(by_layer.shape[0]))
    fig = go.Figure()
    for column, (name, colour) in enumerate((("attention", "#1f77b4"), ("MLP", "#ff7f0e"))):
        fig.add_trace(go.Bar(
            x=blocks, y=by_layer[:, column].tolist(), name=name, marker_color=colour,
            hovertemplate=f"block %{{x}} {name}: %{{y:+.3f}} logits<extra></extra>",
        ))
    embed = float(result.contributions[result.component_labels.index("embed")])
    what = clean_token(result.target_token) + (
        f" − {clean_token(result.versus_token)}" if result.versus_token else "")
    tops = ", ".join(f"{label} {value:+.2f}" for label, value in result.top(top))
    fig.update_layout(
        template=TEMPLATE, barmode="group", margin_t=110,
        title=(f"Direct logit attribution of {what}: total {result.total:.2f}<br>"
               f"<sup>= embeddings {embed:+.2f} + blocks + constant {result.constant:+.2f}; "
               f"{LINEARISATION}<br>top: {tops}</sup>"),
        xaxis_title="block", yaxis_title="contribution to the logit" + (" difference" if result.versus_token else ""),
        legend_title_text="component",
    )
    return fig


def patching_heatmap(result: "PatchResult", *, restored: bool = True) -> "go.Figure":
    """Heatmap ``[layer, pos]`` of what patching the clean stream into the corrupt run restores.

    Args:
        result: a :class:`lenslib.causal.patching.PatchResult`.
        restored: colour by the restored fraction (0 = corrupt, 1 = clean; default), or by the
            raw metric.
    """
    import plotly.graph_objects as go

    z = (result.restored if restored else result.metric).numpy()
    columns = [int(p) for p in result.positions]
    x = [f"{p}: {clean_token(result.clean_tokens[p])}" if result.clean_tokens[p] == result.corrupt_tokens[p]
         else f"{p}: {clean_token(result.clean_tokens[p])} / {clean_token(result.corrupt_tokens[p])}"
         for p in columns]
    metric = {"prob": "P(answer)", "logit": "logit(answer)",
              "logit_diff": "logit difference"}[result.metric_name]
    colour = "restored fraction" if restored else metric
    fig = go.Figure(go.Heatmap(
        z=z, x=x, y=result.layer_labels, colorscale="RdBu", zmid=0 if restored else None,
        colorbar_title=colour,
        hovertemplate="layer %{y}<br>position %{x}<br>" + colour + ": %{z:.3f}<extra></extra>",
    ))
    what = clean_token(result.target_token) + (
        f" vs {clean_token(result.versus_token)}" if result.versus_token else "")
    fig.update_layout(
        template=TEMPLATE,
        title=(f"Patching clean into corrupt: {metric}, {what}<br>"
               f"<sup>clean {result.clean_value:.3g}, corrupt {result.corrupt_value:.3g}; "
               "residual stream, one layer × position patched per run</sup>"),
        xaxis_title="position (clean / corrupt token)", yaxis_title="layer (stream entering block)",
        yaxis_autorange="reversed",
    )
    return fig
