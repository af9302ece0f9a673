"""The fit report of a tuned lens: its held-out scores as a table, figures and an HTML page.

Reads ``lens.record`` (written by :mod:`lenslib.tuned_cache`): per layer, the full-vocabulary
held-out KL(final || lens) in nats, top-1 agreement with the final layer and cross-entropy to
the next token, for the logit lens, the least-squares start and the tuned lens.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from lenslib.tuned_lens import TunedLens

LENS_NAMES = {"logit": "logit lens", "least_squares": "least-squares start", "tuned": "tuned lens"}
STATS = {"kl_nats": "KL(final || lens), nats", "top1_agreement": "top-1 agreement with the final layer",
         "cross_entropy_nats": "cross-entropy to the next token, nats"}


def heldout_frame(lens: "TunedLens") -> "pd.DataFrame":
    """The record's held-out scores: one row per lens x layer (see :class:`LensEvaluation`).

    Raises:
        ValueError: the lens carries no held-out scores (e.g. made by hand or imported).
    """
    import pandas as pd

    rows = lens.record.get("heldout")
    if not rows:
        raise ValueError("this lens has no held-out scores in its record; score it with "
                         "lenslib.lens_eval.evaluate_lens")
    return pd.DataFrame.from_records(rows)


def side_by_side(frame: "pd.DataFrame") -> "pd.DataFrame":
    """``[layer]`` rows, KL and top-1 agreement columns for each lens, side by side."""
    wide = frame.pivot(index=["layer", "label"], columns="lens", values=["kl_nats", "top1_agreement"])
    order = [n for n in LENS_NAMES if n in frame.lens.unique()]
    wide = wide.reindex(columns=[(s, n) for s in ("kl_nats", "top1_agreement") for n in order])
    wide.columns = [f"{'KL' if s == 'kl_nats' else 'top1'} {n}" for s, n in wide.columns]
    return wide.reset_index()


def fit_table(lens: "TunedLens") -> str:
    """Plain-text report: provenance, fit times, per-layer table and the means over layers."""
    record = lens.record
    frame = heldout_frame(lens)
    corpus = record.get("corpus", {})
    fit = record.get("fit", {})
    seconds = fit.get("seconds", {})
    means = record.get("heldout_mean_kl_nats_but_last", {})
    lines = [
        f"tuned lens of {record.get('model', lens.signature['model_name'])}: "
        f"{len(lens.labels)} translators of {lens.signature['d_model']}x{lens.signature['d_model']}",
        f"fitted on {fit.get('fit_tokens')} tokens of {corpus.get('source')} (licence: {corpus.get('licence')})",
        f"held out: {corpus.get('split')}; scored on {corpus.get('heldout_tokens_scored')} tokens, full vocabulary",
        "fit seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()),
        *_choice_lines(fit),
        "",
        side_by_side(frame).to_string(index=False, float_format=lambda x: f"{x:.3f}"),
        "",
        "mean KL over all layers but the last (nats): "
        + ", ".join(f"{LENS_NAMES[k]} {v:.3f}" for k, v in means.items()),
    ]
    return "\n".join(lines)


def _choice_lines(fit: dict) -> list[str]:
    """The per-layer selection, if the fit made one: which translator each layer kept."""
    choice = fit.get("choice")
    if not choice:
        return []
    counts = {name: choice.count(name) for name in dict.fromkeys(choice)}
    kept = [f"{name} at {n} layer{'s' if n != 1 else ''}" for name, n in counts.items()]
    lines = [f"per-layer selection on {fit.get('select_tokens')} validation tokens (fitting split, not fitted on): "
             + ", ".join(kept)]
    others = [f"{i}: {name}" for i, name in enumerate(choice) if name != "refined"]
    if others:
        lines.append("layers not keeping the refined map: " + ", ".join(others))
    return lines


def heldout_figure(frame: "pd.DataFrame", stat: str = "kl_nats", *, title: str = "") -> "go.Figure":
    """One line per lens over the layers: ``stat`` is a column of :func:`heldout_frame`."""
    import plotly.graph_objects as go

    if stat not in STATS:
        raise ValueError(f"stat must be one of {sorted(STATS)}, got {stat!r}")
    fig = go.Figure()
    for name, rows in frame.groupby("lens", sort=False):
        fig.add_trace(go.Scatter(x=rows.label, y=rows[stat], mode="lines+markers",
                                 name=LENS_NAMES.get(name, name)))
    fig.update_layout(template="plotly_white", title=title or STATS[stat], width=800, height=420)
    fig.update_xaxes(title_text="layer (accumulated_resid label)")
    fig.update_yaxes(title_text=STATS[stat], type="log" if stat == "kl_nats" else "linear")
    return fig


def tune_report(lens: "TunedLens") -> str:
    """A standalone HTML page: the text report and the KL and top-1 agreement figures."""
    from lenslib.report import _figures, _page

    frame = heldout_frame(lens)
    name = lens.record.get("model", lens.signature["model_name"])
    figures = [heldout_figure(frame, "kl_nats", title=f"{name}: held-out KL by layer"),
               heldout_figure(frame, "top1_agreement", title=f"{name}: top-1 agreement by layer")]
    body = [f"<h1>Tuned lens of {html.escape(str(name))}</h1>",
            f"<pre>{html.escape(fit_table(lens))}</pre>", *_figures(figures)]
    return _page(f"tuned lens: {name}", body)
