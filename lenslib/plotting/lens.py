"""Plotly figures of logit-lens results: a layer x position grid and target trajectories.

>>> import lenslib
>>> from lenslib.plotting.lens import lens_grid, target_trajectory
>>> model = lenslib.load_model("tiny-llama")
>>> fig = lens_grid(lenslib.logit_lens(model, "Hello", k=3))   # colour: entropy (nats)
>>> fig.data[0].z.shape            # [layer, pos]: embeddings + 2 blocks, BOS + 5 characters
(3, 6)
>>> r = lenslib.logit_lens(model, "Hello", target="o", positions="last")
>>> len(target_trajectory(r).data[0].y)    # one value per layer
3

Every function returns a ``plotly.graph_objects.Figure`` and never shows it. Token text is
passed through :func:`clean_token`, so tokens such as ``"<b>"`` or ``" "`` show literally.
For static copies of figures in notebooks, see :func:`configure_static_images`.
"""

from __future__ import annotations

import html
import math
import os
import unicodedata
import warnings
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np

from lenslib.errors import InputError
from lenslib.lens.result import LensResult

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from lenslib.recall.analysis import RecallRun

TEMPLATE = "plotly_white"
_MARKERS = {"Ġ": " ", "▁": " ", "Ċ": "\n"}  # byte-level BPE / SentencePiece space and newline
_VISIBLE = {"\n": "↵", "\t": "⇥", "\r": "␍"}

# stat -> (LensResult attribute, colour-bar title, log colour scale, reversed colour scale)
GRID_STATS = {
    "entropy": ("entropy", "entropy (nats)", False, True),
    "top1_prob": ("top_probs", "top-1 probability", False, False),
    "kl_to_final": ("kl_to_final", "KL(final ‖ layer) (nats)", True, True),
    "target_prob": ("target_prob", "target probability", False, False),
    "target_rank": ("target_rank", "target rank (1 = top)", True, True),
}
KL_FLOOR = 1e-3  # nats added before log10 so that KL = 0 (the final layer) is drawable

# stat -> (LensResult attribute, y-axis title, log y axis)
TRAJECTORY_STATS = {
    "prob": ("target_prob", "target probability", False),
    "logprob": ("target_logprob", "target log-probability (nats)", False),
    "rank": ("target_rank", "target rank (1 = top)", True),
}
PROFILE_STATS = {"entropy": "entropy (nats)", "kl_to_final": "KL(final ‖ layer) (nats)"}


def clean_token(s: str, *, visible_spaces: bool = True, escape: bool = True) -> str:
    """Make a token readable and safe to put in plotly (or HTML) text.

    Rules, in order: byte-level markers ``Ġ`` and ``▁`` become a space and ``Ċ`` a newline;
    a newline shows as ``↵``, a tab as ``⇥``, a carriage return as ``␍``, any other control
    character as ``\\xNN``; with ``visible_spaces`` each leading or trailing space shows as
    ``·`` (inner spaces stay); the empty token shows as ``∅``; finally ``&``, ``<`` and ``>``
    are HTML-escaped (unless ``escape=False``, for text that is never parsed as HTML), so
    ``"<b>"`` displays as the three characters, not as bold text.

    >>> clean_token("Ġthe"), clean_token("a\\nb"), clean_token("<b>")
    ('·the', 'a↵b', '&lt;b&gt;')

    Args:
        s: the token's string.
        visible_spaces: mark leading and trailing spaces with ``·``.
        escape: HTML-escape the result.

    Returns:
        The display string.
    """
    for marker, char in _MARKERS.items():
        s = s.replace(marker, char)
    s = "".join(
        _VISIBLE.get(c, f"\\x{ord(c):02x}" if unicodedata.category(c) == "Cc" else c) for c in s
    )
    if visible_spaces:
        body = s.strip(" ")
        if not body:
            s = "·" * len(s)
        else:
            lead, trail = len(s) - len(s.lstrip(" ")), len(s) - len(s.rstrip(" "))
            s = "·" * lead + body + "·" * trail
    if not s:
        return "∅"
    return html.escape(s, quote=False) if escape else s


def lens_grid(
    result: LensResult, stat: str = "entropy", *, layer_stride: int = 1, title: Optional[str] = None
) -> "go.Figure":
    """Heatmap of one prompt: layers (bottom = embeddings) by positions, top-1 token in each cell.

    Colour scales (bright = the layer is confident, close to the final layer, or ranks the
    target high): ``"entropy"`` of the layer's next-token distribution (nats);
    ``"top1_prob"``; ``"kl_to_final"``, KL(final || layer) in nats, coloured by
    ``log10(KL + 1e-3)`` with the colour bar labelled in nats; ``"target_prob"``;
    ``"target_rank"`` (log colour scale). Cells without a target are blank. Hovering a cell
    shows the layer, the input token, the statistic and the top-k tokens with probabilities.

    Args:
        result: a :class:`LensResult`; its ``positions`` are the columns.
        stat: one of ``GRID_STATS``.
        layer_stride: keep every n-th layer, and always the final one (for deep models).
        title: figure title; default names the model and the statistic.

    Returns:
        A figure whose ``data[0]`` is the heatmap, ``z`` of shape ``[kept layers, pos]``.

    Raises:
        ValueError: unknown ``stat`` or ``layer_stride`` < 1.
    """
    import plotly.graph_objects as go

    field, bar_title, log_scale, reverse = _choice(stat, GRID_STATS, "stat")
    if isinstance(layer_stride, bool) or not isinstance(layer_stride, int) or layer_stride < 1:
        raise InputError(f"layer_stride must be a positive int, got {layer_stride!r}")
    layers = list(range(0, result.n_layers, layer_stride))
    if layers[-1] != result.n_layers - 1:
        layers.append(result.n_layers - 1)
    values = getattr(result, field)
    values = (values[..., 0] if field == "top_probs" else values)[layers].double().numpy()
    if stat.startswith("target"):
        values[:, result.target_ids.numpy() < 0] = np.nan
    z, bar = _log_colour(values, stat) if log_scale else (values, {})
    positions = result.positions.tolist()
    inputs = [clean_token(result.str_tokens[p]) for p in positions]
    top1 = [[clean_token(result.top_tokens[l][c][0]) for c in range(len(positions))] for l in layers]
    hover = [
        [_cell_hover(result, l, c, inputs[c], bar_title, values[i, c]) for c in range(len(positions))]
        for i, l in enumerate(layers)
    ]
    heatmap = go.Heatmap(
        z=z, x=list(range(len(positions))), y=list(range(len(layers))),
        text=top1, texttemplate="%{text}", textfont={"size": 10},
        hovertext=hover, hoverinfo="text",
        colorscale="Viridis", reversescale=reverse,
        zmin=0.0 if stat in ("top1_prob", "target_prob") else None,
        zmax=1.0 if stat in ("top1_prob", "target_prob") else None,
        colorbar={"title": {"text": bar_title, "side": "right"}, **bar},
    )
    name = f" of {html.escape(result.model_name)}" if result.model_name else ""
    target = f" (target: {html.escape(result.target_label)})" if stat.startswith("target") else ""
    fig = go.Figure(heatmap)
    fig.update_layout(
        template=TEMPLATE,
        title=title if title is not None else f"Logit lens{name}: {bar_title}{target}",
        width=min(1800, max(600, 220 + 56 * len(positions))),
        height=min(1400, max(380, 200 + 30 * len(layers))),
    )
    fig.update_xaxes(
        title_text="position (input token)", tickmode="array", tickvals=list(range(len(positions))),
        ticktext=[f"{tok} [{p}]" for tok, p in zip(inputs, positions)],
    )
    fig.update_yaxes(
        title_text="layer", tickmode="array", tickvals=list(range(len(layers))),
        ticktext=[result.layer_labels[l] for l in layers],
    )
    return fig


def target_trajectory(
    results: Union[LensResult, Sequence[LensResult]],
    *,
    stat: str = "prob",
    labels: Optional[Sequence[str]] = None,
    aggregate: Optional[bool] = None,
    position: int = -1,
    title: Optional[str] = None,
) -> "go.Figure":
    """The target token's probability, log-probability or rank across layers.

    Read at one chosen position of each result (``position`` indexes ``result.positions``;
    default the last). One line per result, or, with ``aggregate`` (default: more than 8
    results), the median and the interquartile band over results: a data-set view.

    To compare several candidate tokens on one prompt, run the lens once per candidate and
    pass the results with labels::

        rs = [logit_lens(model, prompt, target=t, positions="last") for t in (" Paris", " London")]
        target_trajectory(rs, labels=["Paris", "London"])

    Args:
        results: one result or a list; all must share ``layer_labels`` (for different models
            use :func:`cross_model_trajectories`).
        stat: ``"prob"``, ``"logprob"`` (nats) or ``"rank"`` (1 = top; log y axis).
        labels: legend names, one per result; default the cleaned target token.
        aggregate: draw median + IQR instead of one line per result.
        position: which chosen position of each result to read.
        title: figure title.

    Raises:
        ValueError: bad ``stat``, results with different layers, no target at ``position``.
    """
    import plotly.graph_objects as go

    results = [results] if isinstance(results, LensResult) else list(results)
    field, y_title, log_y = _choice(stat, TRAJECTORY_STATS, "stat")
    if not results:
        raise InputError("results is empty: pass at least one LensResult")
    if any(r.layer_labels != results[0].layer_labels for r in results):
        raise InputError("results have different layers; use cross_model_trajectories for several models")
    if labels is not None and len(labels) != len(results):
        raise InputError(f"got {len(labels)} labels for {len(results)} results")
    rows = np.stack([_trajectory(r, field, position) for r in results])  # [result, layer]
    x = results[0].layer_labels
    fig = go.Figure()
    if aggregate if aggregate is not None else len(results) > 8:
        _add_median_band(fig, x, rows, _PALETTE[0], f"median of {len(results)} (IQR band)", x)
    else:
        names = list(labels) if labels is not None else _default_labels(results, position)
        for i, (name, row) in enumerate(zip(names, rows)):
            fig.add_trace(go.Scatter(
                x=x, y=row, mode="lines+markers", name=html.escape(str(name)),
                line={"color": _PALETTE[i % len(_PALETTE)]},
                hovertemplate=f"layer %{{x}}<br>{y_title}: %{{y:.4g}}",
            ))
    _finish(fig, title if title is not None else f"{y_title.capitalize()} across layers", "layer", y_title, log_y)
    fig.update_xaxes(type="category")
    return fig


def cross_model_trajectories(
    results_by_model: dict[str, Union[LensResult, Sequence[LensResult]]],
    *,
    stat: str = "prob",
    position: int = -1,
    title: Optional[str] = None,
) -> "go.Figure":
    """Target trajectories of several models on a relative-depth axis, one colour per model.

    Layer ``i`` of a model with ``L`` lens layers sits at ``i / (L - 1)``: 0 is the embeddings,
    1 the final output, so an 18-layer and a 30-layer model line up. A model with one result
    gets a line; with several, the median and the interquartile band.

    Args:
        results_by_model: model name -> one result or a list (same layers within a model).
        stat: ``"prob"``, ``"logprob"`` (nats) or ``"rank"`` (log y axis).
        position: which chosen position of each result to read (default the last).
        title: figure title.
    """
    field, y_title, log_y = _choice(stat, TRAJECTORY_STATS, "stat")
    curves = {m: np.stack([_trajectory(r, field, position) for r in rs]) for m, rs in _by_model(results_by_model)}
    return _depth_figure(results_by_model, curves, "median", y_title, log_y,
                         title if title is not None else f"{y_title.capitalize()} by relative depth")


def stat_profile(
    results_by_model: dict[str, Union[LensResult, Sequence[LensResult]]],
    stat: str = "entropy",
    *,
    reduce: str = "mean",
    position: int = -1,
    log_y: bool = False,
    title: Optional[str] = None,
) -> "go.Figure":
    """Mean (or median) entropy or KL to the final layer per relative depth, one line per model.

    Args:
        results_by_model: model name -> one result or a list.
        stat: ``"entropy"`` or ``"kl_to_final"`` (both in nats).
        reduce: ``"mean"`` or ``"median"`` over the results of a model.
        position: which chosen position of each result to read (default the last).
        log_y: a logarithmic y axis, for KL, which spans orders of magnitude. Values that are
            not positive (the final layer's KL, 0 by definition) cannot be drawn there: each
            curve then ends at the last layer before, and a note on the figure says so.
        title: figure title.
    """
    y_title = _choice(stat, PROFILE_STATS, "stat")
    _choice(reduce, {"mean": 0, "median": 0}, "reduce")
    curves = {
        m: np.stack([getattr(r, stat)[:, _column(r, position)].double().numpy() for r in rs])
        for m, rs in _by_model(results_by_model)
    }
    dropped = log_y and any((rows <= 0).any() for rows in curves.values())
    if dropped:  # a log axis has no 0: leave those points out rather than draw a line to -inf
        curves = {m: np.where(rows > 0, rows, np.nan) for m, rows in curves.items()}
    fig = _depth_figure(results_by_model, curves, reduce, y_title, log_y,
                        title if title is not None else f"{reduce.capitalize()} {y_title} by relative depth")
    if dropped:
        fig.add_annotation(text="values of 0 (the final layer's KL) are not drawn on a log axis",
                           xref="paper", yref="paper", x=1, y=-0.16, showarrow=False, font={"size": 11})
    return fig


def recall_trajectories(run: "RecallRun", *, stat: str = "prob", by_relation: bool = True,
                        layout: str = "overlay", title: Optional[str] = None) -> "go.Figure":
    """The answer's probability or rank across layers over a recall run: median and IQR band.

    Args:
        run: a :class:`lenslib.recall.analysis.RecallRun` (``probs`` / ``ranks`` are ``[prompt, layer]``).
        stat: ``"prob"`` or ``"rank"`` (log y axis, 1 = top).
        by_relation: one median line and band per relation; otherwise one for all prompts.
        layout: ``"overlay"`` (every relation on one axis) or ``"panels"`` (one small panel per
            relation, shared axes: readable in a static image when there are many relations).
        title: figure title.
    """
    import plotly.graph_objects as go

    rows = _choice(stat, {"prob": run.probs, "rank": run.ranks}, "stat").double().numpy()
    _choice(layout, {"overlay": 0, "panels": 0}, "layout")
    groups = run.table["relation"].to_numpy() if by_relation else np.array(["all prompts"] * len(rows))
    names = list(dict.fromkeys(groups))
    y_title = "probability of the answer" if stat == "prob" else "rank of the answer (1 = top)"
    default = f"The answer's {'probability' if stat == 'prob' else 'rank'} across layers (median, IQR band)"
    if layout == "panels":
        return _recall_panels(run, rows, groups, names, stat, y_title, title or default)
    fig = go.Figure()
    for i, group in enumerate(names):
        chosen = rows[groups == group]
        _add_median_band(fig, list(run.layer_labels), chosen, _PALETTE[i % len(_PALETTE)],
                         f"{html.escape(str(group))} (n={len(chosen)})", run.layer_labels)
    _finish(fig, title or default, "layer", y_title, log_y=stat == "rank")
    fig.update_layout(height=max(500, 260 + 32 * len(names)))  # the static image keeps every legend entry
    return fig


def _recall_panels(run, rows: np.ndarray, groups: np.ndarray, names: list, stat: str, y_title: str, title: str):
    """One panel per group, four across, shared axes; each panel's title names its group and n."""
    from plotly.subplots import make_subplots

    cols = min(4, len(names))
    n_rows = math.ceil(len(names) / cols)
    titles = [f"{html.escape(str(g))} (n={int((groups == g).sum())})" for g in names]
    fig = make_subplots(rows=n_rows, cols=cols, shared_xaxes=True, shared_yaxes=True, subplot_titles=titles,
                        vertical_spacing=0.12 / max(1, n_rows - 1) if n_rows > 1 else 0.1, horizontal_spacing=0.03)
    x = list(range(run.n_layers))
    for i, group in enumerate(names):
        before = len(fig.data)
        _add_median_band(fig, x, rows[groups == group], _PALETTE[0], "median, IQR band", run.layer_labels)
        for trace in fig.data[before:]:
            trace.update(xaxis=f"x{i + 1 if i else ''}", yaxis=f"y{i + 1 if i else ''}", showlegend=False)
    ticks = list(range(0, run.n_layers, max(1, run.n_layers // 4))) + [run.n_layers - 1]
    fig.update_xaxes(tickvals=ticks, ticktext=[run.layer_labels[t] for t in ticks], tickangle=0, tickfont={"size": 9})
    if stat == "rank":
        fig.update_yaxes(type="log", dtick=1, tickformat="~s")
    fig.update_layout(template=TEMPLATE, title=title, width=1000, height=230 * n_rows + 120, showlegend=False)
    fig.update_yaxes(title_text=y_title, col=1, title_font={"size": 11})
    return fig


def configure_static_images(
    renderer: str = "plotly_mimetype+png", *, browser: Optional[str] = None, keep_browser: bool = True
) -> str:
    """Make figures render as interactive JSON plus a PNG (for viewers without JavaScript).

    kaleido (1.x) draws PNGs in a Chrome or Chromium that it finds by ``BROWSER_PATH``, then
    ``PATH`` (``chromium``, ``google-chrome``, ...), then the usual install places; it runs it
    headless with ``--no-sandbox``, so a system chromium works as root. This function finds the
    browser, sets ``BROWSER_PATH`` to it, sets ``plotly.io.renderers.default`` and, with
    ``keep_browser``, starts kaleido's shared browser once, so that each figure does not start
    a browser of its own.

    Args:
        renderer: the plotly renderer to make the default.
        browser: path of a Chrome/Chromium executable; default: search as kaleido does.
        keep_browser: keep one headless browser running for all figures.

    Returns:
        The browser's path.

    Raises:
        RuntimeError: no browser found; install one (``apt-get install chromium``).
    """
    import plotly.io as pio
    from choreographer.browsers.chromium import Chromium

    path = browser or os.environ.get("BROWSER_PATH") or Chromium.find_browser(skip_local=False)
    if not path or not os.access(path, os.X_OK):
        raise RuntimeError(
            f"no Chrome/Chromium found{f' at {path!r}' if path else ''}; kaleido needs one to "
            "export PNGs. Install it (`apt-get install chromium` on Debian/Ubuntu, or run "
            "`kaleido_get_chrome`), or pass browser='/path/to/chrome'."
        )
    os.environ["BROWSER_PATH"] = path
    pio.renderers.default = renderer
    if keep_browser:
        import kaleido

        kaleido.start_sync_server(silence_warnings=True)
        # plotly passes per-call options a running server ignores; it warns on every figure.
        warnings.filterwarnings("ignore", message="The kopts argument is ignored", category=UserWarning)
    return path


# ---------------------------------------------------------------- helpers

_PALETTE = ["#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A",  # plotly's qualitative colours,
            "#19D3F3", "#FF6692", "#B6E880", "#FF97FF", "#FECB52",  # then D3's darker ones: up to
            "#1F77B4", "#8C564B", "#7F7F7F", "#BCBD22", "#2CA02C", "#9467BD"]  # 16 series differ


def _choice(value, table: dict, what: str):
    if value not in table:
        raise InputError(f"{what} must be one of {', '.join(map(repr, table))}; got {value!r}")
    return table[value]


def _log_colour(values: np.ndarray, stat: str) -> tuple[np.ndarray, dict]:
    """log10 colour values and a colour bar whose ticks read in the real units."""
    if stat == "kl_to_final":
        z = np.log10(np.clip(values, 0.0, None) + KL_FLOOR)
        top = float(np.nanmax(values)) if np.isfinite(values).any() else 1.0
        ticks = [0.0] + [10.0 ** e for e in range(-2, max(0, math.ceil(math.log10(top + KL_FLOOR))) + 1)]
        tickvals = [math.log10(t + KL_FLOOR) for t in ticks]
    else:  # ranks: 0 means no target
        values[values < 1] = np.nan
        z = np.log10(values)
        top = float(np.nanmax(values)) if np.isfinite(values).any() else 1.0
        ticks = [10 ** e for e in range(0, max(0, math.ceil(math.log10(top))) + 1)]
        tickvals = [math.log10(t) for t in ticks]
    return z, {"tickmode": "array", "tickvals": tickvals, "ticktext": [f"{t:g}" for t in ticks]}


def _cell_hover(result: LensResult, layer: int, col: int, input_token: str, name: str, value) -> str:
    pos = int(result.positions[col])
    top = "<br>".join(
        f"  {j + 1}. {clean_token(tok)}  {float(p):.3f}"
        for j, (tok, p) in enumerate(zip(result.top_tokens[layer][col], result.top_probs[layer, col]))
    )
    lines = [f"layer {result.layer_labels[layer]}", f"input [{pos}] {input_token}",
             f"{name}: {'–' if np.isnan(value) else f'{value:.4g}'}"]
    if int(result.target_ids[col]) >= 0:
        lines.append(
            f"target {clean_token(result.target_tokens[col])}: p={float(result.target_prob[layer, col]):.3g}, "
            f"rank {int(result.target_rank[layer, col])}"
        )
    return "<br>".join(lines + ["top-k:", top])


def _column(result: LensResult, position: int) -> int:
    n = result.positions.numel()
    if not -n <= position < n:
        raise IndexError(f"position {position} is outside the result's {n} chosen position(s)")
    return position % n


def _trajectory(result: LensResult, field: str, position: int) -> np.ndarray:
    col = _column(result, position)
    if int(result.target_ids[col]) < 0:
        raise InputError(
            f"the result has no target at chosen position {int(result.positions[col])} (the target is "
            "the next token and the prompt ends there); pass target=' token' to logit_lens, or a "
            "position with a next token (position=-2 with positions=None)"
        )
    return getattr(result, field)[:, col].double().numpy()


def _default_labels(results: list[LensResult], position: int) -> list[str]:
    names = [clean_token(r.target_tokens[_column(r, position)]) for r in results]
    return [f"{n} ({i})" if names.count(n) > 1 else n for i, n in enumerate(names)]


def _by_model(results_by_model: dict) -> list[tuple[str, list[LensResult]]]:
    if not results_by_model:
        raise InputError("results_by_model is empty: pass {model name: results}")
    out = []
    for model, rs in results_by_model.items():
        rs = [rs] if isinstance(rs, LensResult) else list(rs)
        if not rs:
            raise InputError(f"model {model!r} has no results")
        if any(r.layer_labels != rs[0].layer_labels for r in rs):
            raise InputError(f"the results of model {model!r} have different layers")
        out.append((model, rs))
    return out


def _depth_figure(results_by_model, curves: dict, reduce: str, y_title: str, log_y: bool, title: str):
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (model, rs) in enumerate(_by_model(results_by_model)):
        rows, colour, name = curves[model], _PALETTE[i % len(_PALETTE)], html.escape(str(model))
        depth = np.arange(rows.shape[1]) / (rows.shape[1] - 1)
        if len(rows) == 1:
            fig.add_trace(go.Scatter(
                x=depth, y=rows[0], mode="lines+markers", name=name, line={"color": colour},
                customdata=rs[0].layer_labels,
                hovertemplate="layer %{customdata} (depth %{x:.2f})<br>%{y:.4g}",
            ))
        else:
            _add_median_band(fig, depth, rows, colour, f"{name} ({reduce} of {len(rows)})",
                             rs[0].layer_labels, centre=reduce)
    _finish(fig, title, "relative depth (0 = embeddings, 1 = final layer)", y_title, log_y)
    fig.update_xaxes(range=[-0.02, 1.02])
    return fig


def _add_median_band(fig, x, rows: np.ndarray, colour: str, name: str, layer_labels, centre: str = "median"):
    """A centre line (median or mean over rows) and the 25-75 % band around it."""
    import plotly.graph_objects as go

    q25, q50, q75 = np.nanpercentile(rows, [25, 50, 75], axis=0)
    mid = np.nanmean(rows, axis=0) if centre == "mean" else q50
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    group = name
    fig.add_trace(go.Scatter(x=x, y=q75, mode="lines", line={"width": 0}, legendgroup=group,
                             showlegend=False, hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=x, y=q25, mode="lines", line={"width": 0}, fill="tonexty",
                             fillcolor=f"rgba({r},{g},{b},0.2)", legendgroup=group,
                             showlegend=False, hoverinfo="skip"))
    fig.add_trace(go.Scatter(
        x=x, y=mid, mode="lines+markers", name=name, line={"color": colour}, legendgroup=group,
        customdata=np.stack([np.asarray(layer_labels, dtype=object), q25, q75], axis=1),
        hovertemplate=f"layer %{{customdata[0]}}<br>{centre} %{{y:.4g}} "
                      "(IQR %{customdata[1]:.3g}–%{customdata[2]:.3g})",
    ))


def _finish(fig, title: str, x_title: str, y_title: str, log_y: bool) -> None:
    fig.update_layout(template=TEMPLATE, title=title, width=800, height=480, hovermode="closest")
    fig.update_xaxes(title_text=x_title)
    if log_y:  # ticks at powers of ten only, written out (1, 10, 100, 1k): no bare "2" or "5" ticks
        fig.update_yaxes(title_text=y_title, type="log", dtick=1, tickformat="~s")
    else:
        fig.update_yaxes(title_text=y_title, type="linear")
