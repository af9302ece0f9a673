"""HTML reports of the lens: one prompt (``lenslib lens --html``) and several models (``compare``)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from lenslib.plotting.lens import (
    cross_model_trajectories,
    lens_grid,
    stat_profile,
    target_trajectory,
)
from lenslib.reports.html import figures, page

if TYPE_CHECKING:
    from lenslib.lens.result import LensResult


def lens_report(result: "LensResult", *, model_name: str, prompt: str) -> str:
    """One prompt: the lens grid (entropy and top-1 probability) and the per-layer table."""
    tokens = "".join(result.str_tokens)
    figs = [lens_grid(result, "entropy"), lens_grid(result, "top1_prob")]
    if (result.target_ids >= 0).any():
        figs.append(target_trajectory(result, stat="prob", position=_last_with_target(result)))
    col = result.positions.numel() - 1
    rows = "".join(
        f"<tr><td>{html.escape(label)}</td><td>{html.escape(', '.join(f'{t!r} {float(p):.2f}' for t, p in zip(result.top_tokens[i][col][:5], result.top_probs[i, col, :5])))}</td>"
        f"<td>{float(result.entropy[i, col]):.2f}</td><td>{float(result.kl_to_final[i, col]):.2f}</td></tr>"
        for i, label in enumerate(result.layer_labels)
    )
    return page(
        f"lenslib: {model_name}",
        [
            f"<h1>Logit lens of <code>{html.escape(model_name)}</code></h1>",
            f"<p>Prompt: <code>{html.escape(prompt)}</code></p>",
            f"<p>Tokens as run (BOS included): <code>{html.escape(tokens)}</code></p>",
            f"<p>Target: {html.escape(result.target_label)}</p>",
            *figures(figs),
            "<h2>Last position, layer by layer</h2>",
            "<table><tr><th>layer</th><th>top-5 (probability)</th><th>entropy (nats)</th>"
            f"<th>KL to final (nats)</th></tr>{rows}</table>",
        ],
    )


def _last_with_target(result: "LensResult") -> int:
    has = (result.target_ids >= 0).nonzero().flatten()
    return int(has[-1])


def compare_report(results: dict[str, "LensResult"], *, prompt: str) -> str:
    """Several models on one prompt, along relative depth."""
    figs = [
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
    return page(
        "lenslib compare",
        [
            "<h1>Cross-model logit lens</h1>",
            f"<p>Prompt: <code>{html.escape(prompt)}</code></p><ul>{targets}</ul>",
            "<p>x axis: relative depth (0 = embeddings, 1 = the model's output), so models of "
            "different depths line up. Each model uses its own tokenizer.</p>",
            *figures(figs),
        ],
    )
