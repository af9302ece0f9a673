"""Interactive circuitsvis views of a logit-lens result, rendered offline.

>>> import lenslib
>>> from lenslib.plotting.views import next_token_prob_view
>>> model = lenslib.load_model("tiny-llama")
>>> view = next_token_prob_view(lenslib.logit_lens(model, "Hi there", k=3))
>>> "unpkg.com" in str(view)       # circuitsvis's JavaScript is inlined, not fetched
False

Each function returns a :class:`LensView` (a ``circuitsvis`` ``RenderedHTML``) that Jupyter
displays; ``str(view)`` is the same HTML and :meth:`LensView.document` a standalone page.

Two things differ from calling circuitsvis directly:

* Offline. circuitsvis's ``_repr_html_`` probes ``http://google.com`` and, when online,
  loads its JavaScript from unpkg.com; ``str(view)`` always uses the CDN. A ``LensView``
  always inlines the bundled JavaScript (``circuitsvis/dist/cdn/iife.js``, ~1.3 MB per view),
  so it renders without a network and in saved notebooks.
* Escaped. circuitsvis inserts token strings as HTML (``dangerouslySetInnerHTML``) and writes
  its props into a ``<script>`` with plain ``json.dumps``, so a token like ``<img src=x
  onerror=...>`` or ``</script>`` would run as code. Token strings here are HTML-escaped (via
  :func:`lenslib.plotting.lens.clean_token`) and the props JSON escapes ``<``, ``>`` and ``&``.
  Where circuitsvis shows a token as plain text (some tooltips) an escaped token such as
  ``<b>`` reads ``&lt;b&gt;``; that is the price of the main display being safe.
"""

from __future__ import annotations

import functools
import json
import uuid
from pathlib import Path
from typing import Union

import torch

from lenslib.errors import InputError
from lenslib.lens.result import LensResult
from lenslib.plotting.lens import clean_token

try:  # circuitsvis is a dependency, but keep `import lenslib.plotting.views` cheap and robust
    from circuitsvis.utils.render import RenderedHTML
except ImportError:  # pragma: no cover
    RenderedHTML = object


class LensView(RenderedHTML):
    """A circuitsvis view whose HTML carries its own JavaScript (works offline).

    Attributes:
        local_src: the HTML fragment (a ``div`` and a ``script``); also ``cdn_src``.
        summary: what the view shows, in words; the plain-text form where HTML does not render.
    """

    def __init__(self, html: str, summary: str = "a circuitsvis view"):
        self.local_src = self.cdn_src = html
        self.summary = summary

    def __repr__(self) -> str:
        return f"<lenslib view: {self.summary}. Interactive where HTML renders; .document() gives a page>"

    def _repr_html_(self) -> str:
        return self.local_src

    def __str__(self) -> str:
        return self.local_src

    def document(self, title: str = "lenslib view") -> str:
        """A complete HTML page holding the view (UTF-8), e.g. to save and open in a browser."""
        return (
            f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{clean_token(title)}'
            f"</title></head><body>\n{self.local_src}\n</body></html>\n"
        )


def next_token_prob_view(result: LensResult) -> LensView:
    """Each predicted token coloured by the probability each layer gave it (``colored_tokens_multi``).

    Token ``t`` at position ``p + 1`` is coloured by ``target_prob[layer, p]``: the probability
    that the layer, reading the prompt up to ``p``, gave the token that actually came next.
    Buttons pick the layer; hovering a token lists all layers. The colour scale is 0..1 for
    every layer, so layers compare. BOS, never predicted, is not shown.

    Args:
        result: a lens run with the default target (the next token), at any positions.

    Raises:
        ValueError: the result tracks a fixed target, or none of its positions has a next token.
    """
    cols = _next_token_columns(result)
    values = result.target_prob[:, cols].T.double()  # [pos, layer]
    return render_view(
        "ColoredTokensMulti",
        f"each of {len(cols)} tokens coloured by the probability each of {result.n_layers} layers gave it",
        tokens=[view_token(result.target_tokens[c]) for c in cols],
        values=values.tolist(),
        labels=list(result.layer_labels),
        positiveBounds=[1.0] * result.n_layers,
    )


def layer_log_probs_view(result: LensResult, layer: Union[int, str] = -1) -> LensView:
    """circuitsvis's ``TokenLogProbs`` view at one layer: tokens coloured by log-probability.

    Hovering a token shows the previous token, the layer's top-k next tokens with
    probabilities and log-probabilities, and the true token's rank (0 = top, circuitsvis's
    convention). Built from the result's own top-k and target statistics, so the true rank
    over the whole vocabulary is exact and no ``[pos, d_vocab]`` tensor is ever made
    (``circuitsvis.logits.token_log_probs`` would need one).

    Args:
        result: a lens run with the default target (the next token) over consecutive
            positions, e.g. ``positions=None``.
        layer: a layer index (``-1`` = the final layer) or a label such as ``"3_pre"``.

    Raises:
        ValueError: a fixed target, non-consecutive positions, or an unknown layer.
    """
    cols = _next_token_columns(result)
    pos = result.positions[cols].tolist()
    if pos != list(range(pos[0], pos[0] + len(pos))):
        raise InputError(
            f"layer_log_probs_view needs consecutive positions, got {pos}; run logit_lens with "
            "positions=None (all) or a slice"
        )
    l = _layer_index(result, layer)
    prompt = [result.str_tokens[p] for p in pos] + [result.target_tokens[cols[-1]]]
    return render_view(
        "TokenLogProbs",
        f"{len(cols)} tokens coloured by their log-probability at layer {result.layer_labels[l]}",
        prompt=[view_token(t) for t in prompt],
        topKLogProbs=result.top_probs[l, cols].double().log().clamp(min=-1e4).tolist(),
        topKTokens=[[view_token(t) for t in result.top_tokens[l][c]] for c in cols],
        correctTokenRank=(result.target_rank[l, cols] - 1).tolist(),
        correctTokenLogProb=result.target_logprob[l, cols].double().clamp(min=-1e4).tolist(),
    )


def topk_view(result: LensResult) -> LensView:
    """circuitsvis's ``TopkTokens`` table: each layer's top-k next tokens at one position.

    Mapping onto circuitsvis's axes: the "Sample" selector picks the position (labelled with
    its input token); the columns are layers, numbered by index into ``result.layer_labels``
    (0 = embeddings, the last = the model's output); rows are the k most probable next tokens,
    shaded by probability (0..1). Only the result's top-k ids are used; the bottom-k part of
    the table is empty. circuitsvis shows one column at a time when there is a single position
    (its own quirk): widen it with the "Layer" range selector.

    Args:
        result: any lens result.
    """
    n_layer, n_pos, k = result.top_ids.shape
    tokens, top_vals, top_idxs = [], [], []
    for c in range(n_pos):
        ids = result.top_ids[:, c]  # [layer, k]
        unique, index = torch.unique(ids, return_inverse=True)
        string = {int(i): s for i, s in zip(ids.reshape(-1).tolist(), _flat(result.top_tokens, c))}
        tokens.append([view_token(string[int(i)]) for i in unique])
        top_vals.append([result.top_probs[:, c].double().T.tolist()])  # [1, k, layer]
        top_idxs.append([index.T.tolist()])
    return render_view(
        "TopkTokens",
        f"top-{k} next tokens of {n_layer} layers at {n_pos} position(s)",
        tokens=tokens,
        topkVals=top_vals,
        topkIdxs=top_idxs,
        bottomkVals=[[[]] for _ in range(n_pos)],
        bottomkIdxs=[[[]] for _ in range(n_pos)],
        firstDimensionName="Values",
        thirdDimensionName="Layer",
        sampleLabels=[
            f"position {p}: {clean_token(result.str_tokens[p], escape=False)}"
            for p in result.positions.tolist()
        ],
        firstDimensionLabels=[f"top-{k} next-token probabilities"],
    )


# ---------------------------------------------------------------- helpers


def view_token(s: str) -> str:
    """Token text for circuitsvis, which parses it as HTML and shows spaces itself (escaped)."""
    return clean_token(s, visible_spaces=False)


def _flat(top_tokens, col: int) -> list[str]:
    return [t for layer in top_tokens for t in layer[col]]


def _next_token_columns(result: LensResult) -> list[int]:
    if result.target_label != "next token":
        raise InputError(
            f"this view needs the next input token as target, but the result tracks "
            f"{result.target_label}; run logit_lens without target="
        )
    cols = [c for c, t in enumerate(result.target_ids.tolist()) if t >= 0]
    if not cols:
        raise InputError(
            "no chosen position has a next token (the last position never does); run "
            "logit_lens with positions=None"
        )
    return cols


def _layer_index(result: LensResult, layer: Union[int, str]) -> int:
    if isinstance(layer, str):
        if layer not in result.layer_labels:
            raise InputError(f"unknown layer {layer!r}; the layers are {result.layer_labels}")
        return result.layer_labels.index(layer)
    if isinstance(layer, bool) or not isinstance(layer, int) or not -result.n_layers <= layer < result.n_layers:
        raise InputError(f"layer must be a label or an index in [-{result.n_layers}, {result.n_layers}), got {layer!r}")
    return layer % result.n_layers


@functools.lru_cache(maxsize=1)
def _bundle() -> str:
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    return path.read_text(encoding="utf-8").replace("</script>", "")  # as circuitsvis does


def _script_json(props: dict) -> str:
    """JSON that is safe inside a <script> element: no `</script>` or `<!--` can appear."""
    text = json.dumps(props, allow_nan=False, ensure_ascii=False)
    for char, code in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                       ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, code)
    return text


def render_view(component: str, summary: str, **props) -> LensView:
    """A circuitsvis ``component`` with ``props``, as :class:`LensView`: like
    ``circuitsvis.utils.render.render_local``, with script-safe props (see :func:`_script_json`)
    and the bundled JavaScript inlined. Token strings in ``props`` must already have gone
    through :func:`view_token`."""
    element = f"circuits-vis-{uuid.uuid4().hex[:13]}"
    return LensView(
        f'<div id="{element}" style="margin: 15px 0;"></div>\n'
        f'<script crossorigin type="module">\n{_bundle()}\n'
        f'CircuitsVis.render("{element}", CircuitsVis.{component}, {_script_json(props)});\n'
        "</script>",
        summary,
    )
