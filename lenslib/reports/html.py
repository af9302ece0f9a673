"""Standalone HTML reports for the command line: figures with plotly's JavaScript inlined.

Every piece of text from a prompt or a token is escaped before it reaches the page, so a
prompt like ``<script>alert(1)</script>`` shows as text. Reports open offline.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

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


def page(title: str, body: list[str]) -> str:
    """A whole HTML page: ``body`` (HTML pieces), the style, and the note on quantised models."""
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
        + "\n".join(body)
        + f"\n<p class='note'>{html.escape(QUANTISED_NOTE)} Made with lenslib.</p></body></html>\n"
    )


def figures(figures) -> list[str]:
    """Each figure as a div; plotly.js is inlined once, in the first."""
    return [
        fig.to_html(full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False})
        for i, fig in enumerate(figures)
    ]


def table(frame: "pd.DataFrame") -> str:
    """A data frame as an HTML table, every cell escaped."""
    return frame.to_html(index=False, escape=True, na_rep="–", float_format=lambda x: f"{x:.3g}")
