"""The HTML fit report of a tuned lens (``lenslib tune --html``)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from lenslib.plotting.tuned import heldout_figure
from lenslib.reports.html import figures, page
from lenslib.tuned.card import fit_table, heldout_frame

if TYPE_CHECKING:
    from lenslib.tuned.translators import TunedLens


def tune_report(lens: "TunedLens") -> str:
    """A standalone HTML page: the text report and the KL and top-1 agreement figures."""
    frame = heldout_frame(lens)
    name = lens.record.get("model", lens.signature["model_name"])
    figs = [heldout_figure(frame, "kl_nats", title=f"{name}: held-out KL by layer"),
            heldout_figure(frame, "top1_agreement", title=f"{name}: top-1 agreement by layer")]
    body = [f"<h1>Tuned lens of {html.escape(str(name))}</h1>",
            f"<pre>{html.escape(fit_table(lens))}</pre>", *figures(figs)]
    return page(f"tuned lens: {name}", body)
