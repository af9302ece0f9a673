"""Standalone HTML reports for the command line: figures with plotly's JavaScript inlined.

Every piece of text from a prompt or a token is escaped before it reaches the page, so a
prompt like ``<script>alert(1)</script>`` shows as text. Reports open offline.
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from lenslib.lens_result import LensResult
    from lenslib.recall import RecallRun

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f3f3f3; } code { background: #f6f6f6; padding: 1px 4px; }
.note { color: #555; font-size: 0.9em; }
"""

QUANTISED_NOTE = (
    "The bundled models (gemma-3-270m, smollm2-135m) are 4-bit-quantised copies of the public "
    "models: results approximate the originals."
)


def _page(title: str, body: list[str]) -> str:
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
        + "\n".join(body)
        + f"\n<p class='note'>{html.escape(QUANTISED_NOTE)} Made with lenslib.</p></body></html>\n"
    )


def _figures(figures) -> list[str]:
    """Each figure as a div; plotly.js is inlined once, in the first."""
    return [
        fig.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False})
        for i, fig in enumerate(figures)
    ]


def _table(frame: "pd.DataFrame") -> str:
    return frame.to_html(index=False, escape=True, na_rep="–", float_format=lambda x: f"{x:.3g}")


def lens_report(result: "LensResult", *, model_name: str, prompt: str) -> str:
    """One prompt: the lens grid (entropy and top-1 probability) and the per-layer table."""
    from lenslib.plotting import lens_grid, target_trajectory

    tokens = "".join(result.str_tokens)
    figures = [lens_grid(result, "entropy"), lens_grid(result, "top1_prob")]
    if (result.target_ids >= 0).any():
        figures.append(target_trajectory(result, stat="prob", position=_last_with_target(result)))
    col = result.positions.numel() - 1
    rows = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{html.escape(', '.join(f'{t!r} {float(p):.2f}' for t, p in zip(result.top_tokens[i][col][:5], result.top_probs[i, col, :5])))}</td>"
        f"<td>{float(result.entropy[i, col]):.2f}</td><td>{float(result.kl_to_final[i, col]):.2f}</td></tr>"
        for i, label in enumerate(result.layer_labels)
    )
    return _page(
        f"lenslib: {model_name}",
        [
            f"<h1>Logit lens of <code>{html.escape(model_name)}</code></h1>",
            f"<p>Prompt: <code>{html.escape(prompt)}</code></p>",
            f"<p>Tokens as run (BOS included): <code>{html.escape(tokens)}</code></p>",
            f"<p>Target: {html.escape(result.target_label)}</p>",
            *_figures(figures),
            "<h2>Last position, layer by layer</h2>",
            "<table><tr><th>layer</th><th>top-5 (probability)</th><th>entropy (nats)</th>"
            f"<th>KL to final (nats)</th></tr>{rows}</table>",
        ],
    )


def _last_with_target(result: "LensResult") -> int:
    has = (result.target_ids >= 0).nonzero().flatten()
    return int(has[-1])


def recall_summary(run: "RecallRun") -> tuple[dict, "pd.DataFrame"]:
    """Overall numbers as a dict, and one row per relation (accuracy, emergence)."""
    from lenslib.recall import accuracy_by_relation, emergence_by_relation

    emergence = emergence_by_relation(run).drop(columns="n_correct")
    by_relation = accuracy_by_relation(run).join(emergence).reset_index()
    emergence = run.table["emergence_layer"].dropna()
    summary = {
        "model": run.model_name,
        "n_prompts": len(run.table),
        "accuracy": float(run.table["correct"].mean()),
        "median_emergence_layer": float(emergence.median()) if len(emergence) else None,
        "n_layers": run.n_layers,
        "layer_labels": run.layer_labels,
        "by_relation": [
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in by_relation.to_dict("records")
        ],
    }
    return summary, by_relation


def recall_report(run: "RecallRun", *, model_name: str) -> str:
    """Accuracy and emergence by relation, the answer's median trajectory, and every prompt."""
    from lenslib.plotting import recall_trajectories

    summary, by_relation = recall_summary(run)
    return _page(
        f"lenslib recall: {model_name}",
        [
            f"<h1>Factual recall of <code>{html.escape(model_name)}</code></h1>",
            f"<p>{summary['n_prompts']} prompts; accuracy at the final layer "
            f"{summary['accuracy']:.1%}. The emergence layer is the first layer from which the "
            "answer stays top-1 through the final layer.</p>",
            _table(by_relation),
            *_figures([recall_trajectories(run, stat="prob"), recall_trajectories(run, stat="rank")]),
            "<h2>Every prompt</h2>",
            _table(run.table),
        ],
    )


def compare_report(results: dict[str, "LensResult"], *, prompt: str) -> str:
    """Several models on one prompt, along relative depth."""
    from lenslib.plotting import cross_model_trajectories, stat_profile

    figures = [
        cross_model_trajectories(results, stat="prob"),
        cross_model_trajectories(results, stat="rank"),
        stat_profile(results, stat="entropy"),
        stat_profile(results, stat="kl_to_final"),
    ]
    targets = "".join(
        f"<li><code>{html.escape(name)}</code>: target {html.escape(repr(r.target_tokens[0]))}, "
        f"final top-1 {html.escape(repr(r.top_tokens[-1][0][0]))}</li>"
        for name, r in results.items()
    )
    return _page(
        "lenslib compare",
        [
            "<h1>Cross-model logit lens</h1>",
            f"<p>Prompt: <code>{html.escape(prompt)}</code></p><ul>{targets}</ul>",
            "<p>x axis: relative depth (0 = embeddings, 1 = the model's output), so models of "
            "different depths line up. Each model uses its own tokenizer.</p>",
            *_figures(figures),
        ],
    )
