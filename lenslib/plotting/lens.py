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
# d3 format of log-axis ticks (dtick=1: powers of ten only): plain numbers, 0.001 ... 1 ... 100,000,
# then 1e+6 or 1e-7; not SI suffixes ("100m" for 0.1 reads as a hundred million)
LOG_TICKFORMAT = ",~g"
TICK_CHAR_WIDTH = 0.6  # a tick label character's width, in units of the font size (generous for Arial digits and letters)

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
            curve then ends at the last layer before, and the title's subtitle says so.
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
    if dropped:  # in the subtitle, clear of the axis titles
        fig.update_layout(title_subtitle_text="values of 0 (the final layer's KL) are not drawn on a log axis",
                          title_subtitle_font_size=12)
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


PANEL_WIDTH = 1000  # px, the whole panel figure
PANEL_MARGIN = {"l": 70, "r": 30, "t": 90, "b": 50}  # px
PANEL_TICK_FONT = 10  # px


def _recall_panels(run, rows: np.ndarray, groups: np.ndarray, names: list, stat: str, y_title: str, title: str):
    """One panel per group, four across, shared axes; each panel's title names its group and n.

    The x ticks are as many layers as fit side by side in a panel at ``PANEL_TICK_FONT``, always
    with the first and the last (the output); the gap between panels fits half the last label and
    half the first, so neighbouring panels' labels do not touch either. The lowest panel of each
    column carries the x tick labels (also above an empty slot of the last row).
    """
    from plotly.subplots import make_subplots

    cols = min(4, len(names))
    n_rows = math.ceil(len(names) / cols)
    titles = [f"{html.escape(str(g))} (n={int((groups == g).sum())})" for g in names]
    plot_px = PANEL_WIDTH - PANEL_MARGIN["l"] - PANEL_MARGIN["r"]
    labels = run.layer_labels
    gap_px = _label_px(labels[-1]) / 2 + _label_px(labels[0]) / 2 + _label_px("m")
    fig = make_subplots(rows=n_rows, cols=cols, shared_xaxes=True, shared_yaxes=True, subplot_titles=titles,
                        vertical_spacing=0.12 / max(1, n_rows - 1) if n_rows > 1 else 0.1,
                        horizontal_spacing=min(0.2, gap_px / plot_px) if cols > 1 else 0.0)
    x = list(range(run.n_layers))
    for i, group in enumerate(names):
        before = len(fig.data)
        _add_median_band(fig, x, rows[groups == group], _PALETTE[0], "median, IQR band", run.layer_labels)
        for trace in fig.data[before:]:
            trace.update(xaxis=f"x{i + 1 if i else ''}", yaxis=f"y{i + 1 if i else ''}", showlegend=False)
    domain = fig.layout.xaxis.domain  # the x range has half a layer of room each side for the markers
    span_px = (domain[1] - domain[0]) * plot_px * (run.n_layers - 1) / run.n_layers
    ticks = readable_ticks(labels, span_px, PANEL_TICK_FONT)
    fig.update_xaxes(tickmode="array", tickvals=ticks, ticktext=[labels[t] for t in ticks], tickangle=0,
                     tickfont={"size": PANEL_TICK_FONT}, range=[-0.5, run.n_layers - 0.5])
    fig.update_yaxes(autorange=True)  # a fixed x range would otherwise leave y at plotly's default [-1, 4]
    for i in range(len(names), n_rows * cols):  # empty slots of the last row: no bare axes there ...
        fig.update_layout({f"xaxis{i + 1}": {"visible": False}, f"yaxis{i + 1}": {"visible": False}})
    for i in range(max(0, len(names) - cols), len(names)):  # ... so each column's lowest panel labels its x axis
        fig.update_layout({f"xaxis{i + 1 if i else ''}": {"showticklabels": True}})
    if stat == "rank":
        fig.update_yaxes(**_log_axis(rows))
    fig.update_layout(template=TEMPLATE, title=title, width=PANEL_WIDTH, height=230 * n_rows + 120,
                      margin=PANEL_MARGIN, showlegend=False)
    fig.update_yaxes(title_text=y_title, col=1, title_font={"size": 11})
    return fig


def readable_ticks(labels: Sequence[str], axis_px: float, font_px: float) -> list[int]:
    """Indices of ``labels`` to tick on an axis so that no two labels overlap.

    The labels sit evenly, ``axis_px`` pixels from the first to the last. The
    ticks are every ``s``-th label from the first, for the smallest stride ``s`` at which neighbours
    keep one character of space between them, plus the last label (the output layer), dropping
    regular ticks too close to it. A label's width is estimated as ``TICK_CHAR_WIDTH`` x
    ``font_px`` per character.

    >>> labels = [f"{i}_pre" for i in range(18)] + ["final_post"]
    >>> [labels[i] for i in readable_ticks(labels, 205, 10)]
    ['0_pre', '4_pre', '8_pre', '12_pre', 'final_post']
    >>> readable_ticks(["0_pre", "1_pre", "final_post"], 800, 10)
    [0, 1, 2]

    Args:
        labels: the tick labels, one per position on the axis.
        axis_px: pixels from the first label's position to the last one's.
        font_px: the tick font size in pixels.

    Returns:
        Increasing indices into ``labels``: always the last, and the first unless even those two
        labels alone would overlap.

    Raises:
        InputError: no labels, or an axis length or font size that is not positive.
    """
    if not labels:
        raise InputError("labels is empty: there is nothing to tick")
    if not axis_px > 0 or not font_px > 0:
        raise InputError(f"axis_px and font_px must be positive, got {axis_px!r} and {font_px!r}")
    last = len(labels) - 1
    if last == 0:
        return [0]
    px_per_step = axis_px / last
    pad = TICK_CHAR_WIDTH * font_px

    def fits(a: int, b: int) -> bool:
        return (b - a) * px_per_step >= (_label_px(labels[a], font_px) + _label_px(labels[b], font_px)) / 2 + pad

    for stride in range(1, last + 1):
        ticks = list(range(0, last, stride))
        while len(ticks) > 1 and not fits(ticks[-1], last):
            ticks.pop()
        ticks.append(last)
        if all(fits(a, b) for a, b in zip(ticks, ticks[1:])):
            return ticks
    return [0, last] if fits(0, last) else [last]


def _label_px(label: str, font_px: float = PANEL_TICK_FONT) -> float:
    """Estimated width in pixels of a tick label (``TICK_CHAR_WIDTH`` x font size per character)."""
    return TICK_CHAR_WIDTH * font_px * len(label)


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

    q25, q50, q75, mean = _column_summary(rows)
    mid = mean if centre == "mean" else q50
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


def _column_summary(rows: np.ndarray) -> tuple[np.ndarray, ...]:
    """25th, 50th and 75th percentiles and mean of each column of ``rows`` ``[row, layer]``, NaNs skipped.

    A column with no finite value (a layer left out everywhere, e.g. KL = 0 at the output on a log
    axis) gets NaN in all four: it is not drawn, and numpy is not asked to reduce an empty slice.
    """
    out = np.full((4, rows.shape[1]), np.nan)
    kept = np.isfinite(rows).any(axis=0)
    if kept.any():
        out[:3, kept] = np.nanpercentile(rows[:, kept], [25, 50, 75], axis=0)
        out[3, kept] = np.nanmean(rows[:, kept], axis=0)
    return tuple(out)


def _log_axis(values: np.ndarray) -> dict:
    """Settings of a log axis for ``values`` (any shape; values that are not positive are ignored).

    Ticks are written as plain numbers (``LOG_TICKFORMAT``). Where the values reach at least two
    powers of ten the ticks are those powers only (no bare "2" or "5" between them); otherwise
    plotly picks the ticks, so that a narrow range still gets some.
    """
    positive = values[np.isfinite(values) & (values > 0)]
    settings = {"type": "log", "tickformat": LOG_TICKFORMAT, "dtick": None}
    if positive.size:
        powers = math.floor(math.log10(positive.max())) - math.ceil(math.log10(positive.min())) + 1
        if powers >= 2:
            settings["dtick"] = 1
    return settings


def _finish(fig, title: str, x_title: str, y_title: str, log_y: bool) -> None:
    fig.update_layout(template=TEMPLATE, title=title, width=800, height=480, hovermode="closest")
    fig.update_xaxes(title_text=x_title)
    if log_y:
        ys = [np.asarray(t.y, dtype=float) for t in fig.data if t.y is not None]
        fig.update_yaxes(title_text=y_title, **_log_axis(np.concatenate(ys) if ys else np.array([])))
    else:
        fig.update_yaxes(title_text=y_title, type="linear")
