"""Figures of a tuned lens's held-out scores."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lenslib.errors import InputError
from lenslib.plotting.lens import LOG_TICKFORMAT, TEMPLATE
from lenslib.tuned.card import LENS_NAMES

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

STATS = {"kl_nats": "KL(final || lens), nats", "top1_agreement": "top-1 agreement with the final layer",
         "cross_entropy_nats": "cross-entropy to the next token, nats"}


def heldout_figure(frame: "pd.DataFrame", stat: str = "kl_nats", *, title: str = "") -> "go.Figure":
    """One line per lens over the layers: ``stat`` is a column of :func:`heldout_frame`."""
    import plotly.graph_objects as go

    if stat not in STATS:
        raise InputError(f"stat must be one of {sorted(STATS)}, got {stat!r}")
    log_y = stat == "kl_nats"
    fig = go.Figure()
    for name, rows in frame.groupby("lens", sort=False):
        y = rows[stat].where(rows[stat] > 0) if log_y else rows[stat]  # a log axis has no 0 (the output's KL)
        fig.add_trace(go.Scatter(x=rows.label, y=y, mode="lines+markers", name=LENS_NAMES.get(name, name)))
    fig.update_layout(template=TEMPLATE, title=title or STATS[stat], width=800, height=420)
    fig.update_xaxes(title_text="layer (stream entering block l; final_post = the model's output)")
    if log_y:
        fig.update_yaxes(title_text=STATS[stat], type="log", dtick=1, tickformat=LOG_TICKFORMAT)
        fig.update_layout(title_subtitle_text="the output layer's KL is 0 by definition and is not drawn on a log axis",
                          title_subtitle_font_size=12)  # in the subtitle, clear of the axis titles
    else:
        fig.update_yaxes(title_text=STATS[stat], type="linear")
    return fig
