"""The HTML report of a factual-recall run (``lenslib recall``)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from lenslib.plotting.lens import recall_trajectories
from lenslib.recall.analysis import recall_summary
from lenslib.reports.html import figures, page, table

if TYPE_CHECKING:
    from lenslib.recall.analysis import RecallRun


def recall_report(run: "RecallRun", *, model_name: str) -> str:
    """Accuracy and emergence by relation, the answer's median trajectory, and every prompt."""
    summary, by_relation = recall_summary(run)
    return page(
        f"lenslib recall: {model_name}",
        [
            f"<h1>Factual recall of <code>{html.escape(model_name)}</code></h1>",
            f"<p>{summary['n_prompts']} prompts; accuracy at the final layer "
            f"{summary['accuracy']:.1%}. The emergence layer is the first layer from which the "
            "answer stays top-1 through the final layer.</p>",
            table(by_relation),
            *figures([recall_trajectories(run, stat="prob"), recall_trajectories(run, stat="rank")]),
            "<h2>Every prompt</h2>",
            table(run.table),
        ],
    )


