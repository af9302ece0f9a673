"""Attention patterns of chosen heads, and which heads a patching result says to look at.

``pattern[h, q, k]`` is the softmax weight head ``h`` puts on source position ``k`` when writing
at destination position ``q`` (``blocks.{l}.attn.hook_pattern``; each row sums to 1, and is 0
above the diagonal: attention is causal). Figures: :func:`lenslib.plotting.attention_pattern_figure`
(static) and :func:`lenslib.plotting.views.attention_heads_view` (circuitsvis).

>>> import lenslib
>>> from lenslib.causal.attention import attention_patterns
>>> model = lenslib.load_model("tiny-llama")
>>> patterns = attention_patterns(model, "abcab", heads=[(1, 0), (0, None)])   # None: every head
>>> patterns.labels
['1_attn_h0', '0_attn_h0', '0_attn_h1', '0_attn_h2', '0_attn_h3']
>>> patterns.pattern.shape                          # [head, dest, src]: BOS + 5 characters
torch.Size([5, 6, 6])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Sequence, Union

import torch
from jaxtyping import Float
from torch import Tensor

from lenslib.causal.patching import PatchResult
from lenslib.core import bridge
from lenslib.core.tokens import Decoder, tokenize
from lenslib.errors import InputError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

HeadSpec = tuple[int, Optional[int]]


@dataclass
class AttentionPatterns:
    """The attention patterns of a few heads on one prompt.

    Attributes:
        pattern: ``[head, dest, src]`` attention weights (rows sum to 1; 0 above the diagonal).
        layers, heads: per chosen head, its block and its index in the block.
        str_tokens: the prompt's tokens, BOS included.
        model_name: the model's name.
    """

    pattern: Float[Tensor, "head dest src"]
    layers: list[int]
    heads: list[int]
    str_tokens: list[str]
    model_name: str = field(default="", repr=False)

    @property
    def labels(self) -> list[str]:
        """``"{layer}_attn_h{head}"`` per chosen head (as patching and attribution name them)."""
        return [f"{l}_attn_h{h}" for l, h in zip(self.layers, self.heads)]

    def top_sources(self, index: int, dest: int = -1, n: int = 3) -> list[tuple[int, str, float]]:
        """The ``n`` source positions head number ``index`` (in this result) attends to most from
        ``dest``: ``(position, token, weight)``."""
        row = self.pattern[index, dest]
        order = row.argsort(descending=True)[:n].tolist()
        return [(k, self.str_tokens[k], float(row[k])) for k in order]

    def to_frame(self):
        """A tidy ``pandas.DataFrame``: one row per head x destination x source at or before it
        (``layer``, ``head``, ``dest``, ``dest_token``, ``src``, ``src_token``, ``weight``)."""
        import pandas as pd

        rows = []
        for i, (l, h) in enumerate(zip(self.layers, self.heads)):
            for q in range(self.pattern.shape[1]):
                for k in range(q + 1):
                    rows.append({"layer": l, "head": h, "dest": q, "dest_token": self.str_tokens[q], "src": k,
                                 "src_token": self.str_tokens[k], "weight": float(self.pattern[i, q, k])})
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        """Every field as plain Python values, for JSON."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["pattern"] = self.pattern.tolist()
        out["labels"] = self.labels
        return out

    def __str__(self) -> str:
        """Per head, where the last position attends most."""
        lines = [f"attention patterns{f' of {self.model_name}' if self.model_name else ''}, "
                 f"{len(self.layers)} head(s); from the last position ({self.str_tokens[-1]!r}) to:"]
        for i, label in enumerate(self.labels):
            lines.append(f"  {label:<13} " + ", ".join(f"{k} {t!r} {w:.2f}" for k, t, w in self.top_sources(i)))
        return "\n".join(lines)


def attention_patterns(
    model: "TransformerBridge",
    prompt: str,
    *,
    heads: Sequence[Union[HeadSpec, int]],
    prepend_bos: Optional[bool] = None,
) -> AttentionPatterns:
    """The attention patterns of ``heads`` on ``prompt`` (one forward pass through the bridge,
    caching ``hook_pattern`` of the blocks named only).

    Args:
        model: a ``TransformerBridge``.
        prompt: the text.
        heads: ``(layer, head)`` pairs; ``(layer, None)`` or a bare ``layer`` means every head
            of that block; e.g. the output of :func:`heads_that_matter`.
        prepend_bos: prepend BOS; ``None`` uses the model's default.

    Returns:
        An :class:`AttentionPatterns` with the heads in the order given.

    Raises:
        InputError: an empty prompt, no heads, or a layer or head the model does not have.
    """
    if not isinstance(prompt, str) or not prompt:
        raise InputError(f"prompt must be a non-empty string, got {prompt!r}")
    chosen = expand_heads(heads, int(model.cfg.n_layers), int(model.cfg.n_heads))
    tokens = tokenize(model, prompt, prepend_bos)
    names = sorted({f"blocks.{l}.attn.hook_pattern" for l, _ in chosen})
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens.view(1, -1).to(model.W_U.device), names_filter=names,
                                        **bridge.last_logits_only(model))
        pattern = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][0, h] for l, h in chosen]).float().cpu()
    return AttentionPatterns(
        pattern=pattern,
        layers=[l for l, _ in chosen],
        heads=[h for _, h in chosen],
        str_tokens=Decoder(model.tokenizer).each(tokens.tolist()),
        model_name=bridge.model_name(model),
    )


def expand_heads(heads, n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    """``(layer, head)`` pairs from ``heads`` (see :func:`attention_patterns`), checked."""
    if isinstance(heads, int) and not isinstance(heads, bool):
        heads = [heads]
    elif isinstance(heads, tuple) and len(heads) == 2 and not isinstance(heads[0], (tuple, list)):
        heads = [heads]  # one (layer, head) pair
    if not isinstance(heads, (list, tuple, range)) or not heads:
        raise InputError(f"heads must be a non-empty list of (layer, head) pairs, got {heads!r}")
    out: list[tuple[int, int]] = []
    for spec in heads:
        if isinstance(spec, int) and not isinstance(spec, bool):
            layer, head = spec, None
        elif isinstance(spec, (tuple, list)) and len(spec) == 2:
            layer, head = spec
        else:
            raise InputError(f"each head must be (layer, head), (layer, None) or a layer, got {spec!r}")
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
            raise InputError(f"layer {layer!r} in {spec!r} is not a block of this model; use 0..{n_layers - 1}")
        if head is not None and (isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < n_heads):
            raise InputError(f"head {head!r} in {spec!r} does not exist; use 0..{n_heads - 1}, or None for every head")
        out += [(layer, h) for h in (range(n_heads) if head is None else [head])]
    return out


def heads_that_matter(result: PatchResult, n: int = 4) -> list[HeadSpec]:
    """The heads a patching result says to look at, largest effect first.

    For a ``site="head"`` result: the ``n`` heads whose patch has the largest absolute
    :attr:`~lenslib.causal.patching.PatchResult.effect` (at any patched position), as
    ``(layer, head)``. For a ``site="attn"`` result: the ``n`` blocks whose attention patch has
    the largest absolute effect, as ``(layer, None)`` (every head of the block; on Gemma 3, where
    heads are not patched one by one, this is how to choose them).

    Raises:
        InputError: a result of another site, or ``n < 1``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n must be a positive int, got {n!r}")
    if result.site not in ("head", "attn"):
        raise InputError(f"heads_that_matter needs a result of site='head' or 'attn', got site={result.site!r}; "
                         "run patch_components(..., site='head') (or 'attn' on Gemma)")
    strength = result.effect.abs().amax(1)  # [row]
    order = strength.argsort(descending=True)[:n].tolist()
    blocks = result.block or list(range(len(result.layer_labels)))
    if result.site == "attn":
        return [(blocks[i], None) for i in order]
    return [(blocks[i], result.head[i]) for i in order]
