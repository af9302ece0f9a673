"""Standalone HTML reports of an attribution or a patching run, for the command line."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from lenslib.reports.html import figures, page, table

if TYPE_CHECKING:
    from lenslib.causal.attribution import Attribution
    from lenslib.causal.patching import PatchResult


def attribution_report(result: "Attribution", *, model_name: str, prompt: str) -> str:
    """The contributions figure and the per-component table."""
    from lenslib.causal.attribution import LINEARISATION
    from lenslib.plotting.attribution import contributions_figure

    return page(f"lenslib attribution: {prompt}", [
        f"<h1>Direct logit attribution, {html.escape(model_name)}</h1>",
        f"<p>Prompt: <code>{html.escape(prompt)}</code>; the last position's logit of "
        f"<code>{html.escape(repr(result.target_token))}</code>"
        + (f" minus <code>{html.escape(repr(result.versus_token))}</code>" if result.versus_token else "")
        + f": total {result.total:.4f}, constant {result.constant:.4f}, sum check residual "
        f"{result.residual:.2e}. Linearisation: {html.escape(LINEARISATION)} "
        f"(scale {result.scale:.4g}).</p>",
        *figures([contributions_figure(result)]),
        table(result.to_frame()),
    ])


def patching_report(result: "PatchResult", *, model_name: str, clean: str, corrupt: str) -> str:
    """The effect heatmap (and, for single heads, the block x head map), the raw metric heatmap
    and the table."""
    from lenslib.plotting.attribution import SITE_WORDS, head_patching_heatmap, patching_heatmap

    how = "clean into corrupt" if result.direction == "denoising" else "corrupt into clean"
    shown = [patching_heatmap(result), patching_heatmap(result, restored=False)]
    if result.site == "head":
        shown.insert(0, head_patching_heatmap(result))
    return page(f"lenslib patching: {clean}", [
        f"<h1>Activation patching, {html.escape(model_name)}</h1>",
        f"<p>Clean: <code>{html.escape(clean)}</code><br>Corrupt: <code>{html.escape(corrupt)}</code><br>"
        f"Patched: {html.escape(SITE_WORDS.get(result.site, result.site))}, {how} ({result.direction}).<br>"
        f"Metric: {html.escape(result.metric_name)}; clean {result.clean_value:.4g}, corrupt "
        f"{result.corrupt_value:.4g}.</p>",
        *figures(shown),
        table(result.to_frame()),
    ])
