"""Figures of direct logit attribution, activation patching and the component lens (plotly;
never shown here).

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

from typing import TYPE_CHECKING, Optional

from lenslib.causal.attribution import LINEARISATION
from lenslib.errors import InputError
from lenslib.plotting.lens import TEMPLATE, clean_token

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from lenslib.causal.attribution import Attribution
    from lenslib.causal.component_lens import ComponentLens
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


SITE_WORDS = {"resid": "residual stream", "attn": "attention outputs", "mlp": "MLP outputs",
              "head": "head outputs (hook_z)"}
_METRIC_WORDS = {"prob": "P(answer)", "logit": "logit(answer)", "logit_diff": "logit difference"}


def patching_heatmap(result: "PatchResult", *, restored: bool = True) -> "go.Figure":
    """Heatmap ``[row, pos]`` of what each patch does: rows are the patched layers or components.

    Args:
        result: a :class:`lenslib.causal.patching.PatchResult` (any site, either direction).
        restored: colour by the effect (denoising: the restored fraction, 0 = corrupt,
            1 = clean; noising: the removed fraction ``1 - restored``; default), or by the raw
            metric.
    """
    import plotly.graph_objects as go

    z = (result.effect if restored else result.metric).numpy()
    metric = _METRIC_WORDS[result.metric_name]
    colour = (("restored fraction" if result.direction == "denoising" else "removed fraction") if restored
              else metric)
    fig = go.Figure(go.Heatmap(
        z=z, x=_position_labels(result), y=result.layer_labels, colorscale="RdBu", zmid=0 if restored else None,
        colorbar_title=colour,
        hovertemplate="%{y}<br>position %{x}<br>" + colour + ": %{z:.3f}<extra></extra>",
    ))
    fig.update_layout(
        template=TEMPLATE,
        title=(f"Patching {_how(result)}: {metric}, {_what(result)}<br>"
               f"<sup>clean {result.clean_value:.3g}, corrupt {result.corrupt_value:.3g}; "
               f"{SITE_WORDS.get(result.site, result.site)}, one "
               f"{'layer' if result.site == 'resid' else 'component'} × position patched per run</sup>"),
        xaxis_title="position (clean / corrupt token)",
        yaxis_title="layer (stream entering block)" if result.site == "resid" else "component patched",
        yaxis_autorange="reversed",
    )
    return fig


def component_patching_figure(results: "list[PatchResult]") -> "go.Figure":
    """Side-by-side heatmaps ``[block, pos]`` of several patching results of the same prompts,
    e.g. ``site="attn"`` and ``site="mlp"``, on one colour scale (the effect; see
    :func:`patching_heatmap`): which kind of component, at which block and position, matters.

    Raises:
        InputError: no result, or results of different prompts, metrics or directions.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not results:
        raise InputError("component_patching_figure needs at least one PatchResult")
    first = results[0]
    for other in results[1:]:
        if (other.clean_tokens, other.corrupt_tokens, other.metric_name, other.direction) != (
                first.clean_tokens, first.corrupt_tokens, first.metric_name, first.direction):
            raise InputError("component_patching_figure compares results of the same prompts, metric and direction")
    effects = [r.effect for r in results]
    bound = max(float(e.abs().max()) for e in effects) or 1.0
    fig = make_subplots(rows=1, cols=len(results), shared_yaxes=False,
                        subplot_titles=[SITE_WORDS.get(r.site, r.site) for r in results])
    colour = "restored fraction" if first.direction == "denoising" else "removed fraction"
    for i, (result, effect) in enumerate(zip(results, effects)):
        fig.add_trace(go.Heatmap(
            z=effect.numpy(), x=_position_labels(result), y=result.layer_labels, colorscale="RdBu",
            zmin=-bound, zmax=bound, showscale=i == 0, colorbar_title=colour,
            hovertemplate="%{y}<br>position %{x}<br>" + colour + ": %{z:.3f}<extra></extra>",
        ), row=1, col=i + 1)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(
        template=TEMPLATE, height=max(420, 22 * max(len(r.layer_labels) for r in results) + 160),
        title=(f"Patching {_how(first)}: {_METRIC_WORDS[first.metric_name]}, {_what(first)}<br>"
               f"<sup>clean {first.clean_value:.3g}, corrupt {first.corrupt_value:.3g}; one component × "
               "position patched per run</sup>"),
        margin_t=110,
    )
    return fig


def head_patching_heatmap(result: "PatchResult", *, position: Optional[int] = None) -> "go.Figure":
    """Heatmap ``[block, head]`` of a ``site="head"`` result at one patched position (default:
    the last patched): which single head moves the answer.

    Raises:
        InputError: a result of another site, or a position that was not patched.
    """
    import plotly.graph_objects as go

    grid = result.by_head(position)
    pos = int(result.positions[result.column_of(position)])
    blocks = sorted(set(result.block))
    colour = "restored fraction" if result.direction == "denoising" else "removed fraction"
    fig = go.Figure(go.Heatmap(
        z=grid.numpy(), x=[f"h{h}" for h in range(grid.shape[1])], y=[str(b) for b in blocks],
        colorscale="RdBu", zmid=0, colorbar_title=colour,
        hovertemplate="block %{y} head %{x}<br>" + colour + ": %{z:.3f}<extra></extra>",
    ))
    fig.update_layout(
        template=TEMPLATE, height=max(400, 18 * len(blocks) + 160),
        title=(f"Patching single heads {_how(result)}: {_METRIC_WORDS[result.metric_name]}, {_what(result)}<br>"
               f"<sup>position {pos} ({clean_token(result.clean_tokens[pos])}); clean {result.clean_value:.3g}, "
               f"corrupt {result.corrupt_value:.3g}; hook_z of one head per run</sup>"),
        xaxis_title="head", yaxis_title="block", yaxis_autorange="reversed",
    )
    return fig


def component_lens_figure(lens: "ComponentLens") -> "go.Figure":
    """Heatmap ``[block, source position]``: each block's attention output at the lens's position
    from each source position (heads summed), in logits of the target; hovering shows the
    tokens that part promotes most. The title names the three largest attention blocks."""
    import plotly.graph_objects as go

    by_source = lens.by_source().numpy()
    bound = float(abs(by_source).max()) or 1.0
    x = [f"{k}: {clean_token(t)}" for k, t in enumerate(lens.str_tokens[: by_source.shape[1]])]
    hover = [[", ".join(clean_token(t) for t in lens.source_top_tokens[l][k][:5]) if lens.source_top_tokens[l] else ""
              for k in range(by_source.shape[1])] for l in range(by_source.shape[0])]
    fig = go.Figure(go.Heatmap(
        z=by_source, x=x, y=[str(l) for l in range(by_source.shape[0])], customdata=hover,
        colorscale="RdBu", zmin=-bound, zmax=bound, colorbar_title="logits",
        hovertemplate="block %{y} attention from %{x}<br>%{z:+.3f} logits<br>promotes: %{customdata}<extra></extra>",
    ))
    what = clean_token(lens.target_token) + (f" − {clean_token(lens.versus_token)}" if lens.versus_token else "")
    tops = ", ".join(f"{l}_attn {float(lens.attn[l]):+.2f}" for l in lens.attn.abs().argsort(descending=True)[:3].tolist())
    fig.update_layout(
        template=TEMPLATE, height=max(400, 22 * by_source.shape[0] + 160), margin_t=110,
        title=(f"Where attention reads {what} from, at position {lens.position} "
               f"({clean_token(lens.str_tokens[lens.position])})<br><sup>total {lens.total:.2f}; largest attention "
               f"blocks: {tops}<br>{lens.linearisation}</sup>"),
        xaxis_title="source position", yaxis_title="block", yaxis_autorange="reversed",
    )
    return fig


def _position_labels(result: "PatchResult") -> list[str]:
    return [f"{p}: {clean_token(result.clean_tokens[p])}" if result.clean_tokens[p] == result.corrupt_tokens[p]
            else f"{p}: {clean_token(result.clean_tokens[p])} / {clean_token(result.corrupt_tokens[p])}"
            for p in (int(p) for p in result.positions)]


def _how(result: "PatchResult") -> str:
    return "clean into corrupt" if result.direction == "denoising" else "corrupt into clean"


def _what(result) -> str:
    return clean_token(result.target_token) + (f" vs {clean_token(result.versus_token)}" if result.versus_token else "")
