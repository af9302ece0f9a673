"""A lens on each component: what every block's attention and MLP write at one position, read
through the final norm at a frozen scale, and where the attention read it from.

At position ``q`` the final logit of a token ``t`` is ``(x / s) * g @ W_U[:, t] + b_U[t]`` with
``x`` the last block's output at ``q``, ``g`` the final RMSNorm's gain and ``s = rms(x)``. Freezing
``s`` (as :func:`lenslib.causal.attribution.attribute` does at the last position) makes the logit
a sum over what each part writes into ``x``: the embeddings, each block's attention output and
MLP output. Each such output, read through ``g / s`` and ``W_U``, is also a distribution of its
own: its top tokens are the "logit lens on attention outputs".

Attention is then split by head and by the source position it reads. For head ``h``,
``z[q, h] = sum_k pattern[h, q, k] * v[k, h]``, so the attention output is

    attn[q] = sum_h sum_k pattern[h, q, k] * (v[k, h] @ W_O[h])    (+ b_O)

exactly, on every architecture here (with grouped-query attention, ``v[k, h]`` is the value of
the key-value head ``h`` shares). On Llama (SmolLM2) that is what the block adds to the stream.
Gemma 3 normalises it first (post-attention RMSNorm); its scale at ``q`` is frozen too, so each
part is multiplied by that norm's ``g_post / s_post`` and the parts still add up to the block's
contribution. The result says which linearisation it used.

>>> import lenslib
>>> from lenslib.causal.component_lens import component_lens
>>> model = lenslib.load_model("tiny-llama")
>>> lens = component_lens(model, "abcab", target="c")
>>> lens.attn_by_source.shape                          # [layer, head, source]: BOS + 5 characters
torch.Size([2, 4, 6])
>>> total = lens.embed + float(lens.attn.sum() + lens.mlp.sum()) + lens.constant
>>> abs(total - lens.total) < 1e-4                     # the parts add up to the model's logit
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import torch
from jaxtyping import Float
from torch import Tensor

from lenslib.causal.attribution import (
    final_norm,
    frozen_rms_norm,
    has_post_attention_norm,
    unembed_direction,
)
from lenslib.core import bridge
from lenslib.core.bridge import output_transform
from lenslib.core.tokens import Decoder, Token, resolve_positions, token_id, tokenize
from lenslib.errors import InputError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

FINAL_SCALE = "final norm scale frozen at the position"
POST_ATTENTION_SCALE = "post-attention norm scale frozen at the position"


@dataclass
class ComponentLens:
    """Each block's attention and MLP output at one position, as logits of one token, with the
    attention split by head and source position (units: logits; a logit *difference* with
    ``versus``). See the module docstring for the arithmetic.

    Attributes:
        position: the position read (index into ``str_tokens``, BOS included).
        attn: ``[layer]`` each block's attention output, in logits of the target.
        mlp: ``[layer]`` each block's MLP output, in logits.
        embed: the embeddings' part, in logits.
        constant: ``b_U[target] - b_U[versus]`` (0 without a bias).
        total: the model's own logit (difference) at ``position``; ``embed + attn.sum() +
            mlp.sum() + constant`` equals it up to float rounding.
        scale: the frozen final-norm scale at ``position``.
        attn_by_source: ``[layer, head, src]`` head ``h``'s output from source position ``k``
            (``pattern * v @ W_O``), in logits; summed over heads and sources it is ``attn``
            (``b_O``, if any, is in neither).
        attention: ``[layer, head, src]`` the attention pattern at ``position``.
        top_tokens: ``[layer][0: attention, 1: MLP][k]`` the tokens each output promotes most
            (its logits ``out * g / s @ W_U``, no ``b_U``); ``top_logits`` ``[layer, 2, k]``.
        source_top_tokens: ``[layer][src][k]`` the same for the attention output from each
            source position (heads summed); ``source_top_logits`` ``[layer, src, k]``.
        str_tokens: the prompt's tokens, BOS included.
        target_token, versus_token: the tokens read.
        linearisation: which norm scales were frozen.
        model_name: the model's name.
    """

    position: int
    attn: Float[Tensor, "layer"]
    mlp: Float[Tensor, "layer"]
    embed: float
    constant: float
    total: float
    scale: float
    attn_by_source: Float[Tensor, "layer head src"]
    attention: Float[Tensor, "layer head src"]
    top_tokens: list[list[list[str]]]
    top_logits: Float[Tensor, "layer 2 k"]
    source_top_tokens: list[list[list[str]]]
    source_top_logits: Float[Tensor, "layer src k"]
    str_tokens: list[str]
    target_token: str
    versus_token: Optional[str] = None
    linearisation: str = FINAL_SCALE
    model_name: str = field(default="", repr=False)

    @property
    def layer_labels(self) -> list[str]:
        """``"{l}"`` per block."""
        return [str(l) for l in range(self.attn.numel())]

    @property
    def residual(self) -> float:
        """``total - embed - attn.sum() - mlp.sum() - constant``: float rounding only."""
        return self.total - self.embed - float(self.attn.double().sum() + self.mlp.double().sum()) - self.constant

    def by_source(self) -> Float[Tensor, "layer src"]:
        """``[layer, src]`` each block's attention output per source position (heads summed)."""
        return self.attn_by_source.sum(1)

    def top_sources(self, layer: int, n: int = 3) -> list[tuple[int, str, float]]:
        """The ``n`` source positions whose attention output at ``layer`` moves the target most
        (by absolute value): ``(position, token, logits)``."""
        parts = self.by_source()[layer]
        order = parts.abs().argsort(descending=True)[:n].tolist()
        return [(k, self.str_tokens[k], float(parts[k])) for k in order]

    def to_frame(self):
        """A tidy ``pandas.DataFrame``: one row per layer x head x source position (``layer``,
        ``head``, ``source``, ``source_token``, ``attention``, ``contribution`` in logits)."""
        import pandas as pd

        n_layers, n_heads, n_src = self.attn_by_source.shape
        rows = []
        for l in range(n_layers):
            for h in range(n_heads):
                for k in range(n_src):
                    rows.append({"layer": l, "head": h, "source": k, "source_token": self.str_tokens[k],
                                 "attention": float(self.attention[l, h, k]),
                                 "contribution": float(self.attn_by_source[l, h, k])})
        return pd.DataFrame(rows)

    def layer_frame(self):
        """A ``pandas.DataFrame``: one row per block and kind (``layer``, ``kind`` =
        ``"attn"``/``"mlp"``, ``contribution`` in logits, ``top_tokens`` joined by ``|``)."""
        import pandas as pd

        rows = []
        for l in range(self.attn.numel()):
            for i, kind in enumerate(("attn", "mlp")):
                rows.append({"layer": l, "kind": kind,
                             "contribution": float((self.attn if i == 0 else self.mlp)[l]),
                             "top_tokens": "|".join(self.top_tokens[l][i])})
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        """Every field as plain Python values, for JSON (with ``residual``)."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name in ("attn", "mlp", "attn_by_source", "attention", "top_logits", "source_top_logits"):
            out[name] = out[name].tolist()
        out["residual"] = self.residual
        return out

    def __str__(self) -> str:
        """The sum check, each block's two outputs with their top tokens, and where the three
        largest attention outputs read from."""
        what = repr(self.target_token) + (f" - {self.versus_token!r}" if self.versus_token else "")
        lines = [f"component lens{f' of {self.model_name}' if self.model_name else ''}: logit {what} at position "
                 f"{self.position} ({self.str_tokens[self.position]!r}); {self.linearisation}",
                 f"total {self.total:.4f} = embeddings {self.embed:+.4f} + attention {float(self.attn.sum()):+.4f} "
                 f"+ MLP {float(self.mlp.sum()):+.4f} + constant {self.constant:+.4f} (residual {self.residual:.1e})",
                 "block  attention  top tokens                      MLP        top tokens"]
        for l in range(self.attn.numel()):
            a, m = (", ".join(repr(t) for t in self.top_tokens[l][i][:3]) for i in (0, 1))
            lines.append(f"  {l:<4} {float(self.attn[l]):+9.3f}  {a:<30}  {float(self.mlp[l]):+9.3f}  {m}")
        for l in self.attn.abs().argsort(descending=True)[:3].tolist():
            sources = ", ".join(f"{k} {t!r} {v:+.2f}" for k, t, v in self.top_sources(l))
            lines.append(f"attention of block {l} reads from: {sources}")
        return "\n".join(lines)


def component_lens(
    model: "TransformerBridge",
    prompt: str,
    *,
    target: Token,
    versus: Optional[Token] = None,
    position: int = -1,
    k: int = 5,
    prepend_bos: Optional[bool] = None,
) -> ComponentLens:
    """Read each block's attention and MLP output at one position as logits of ``target``, and
    split the attention by head and source position.

    One forward pass through the bridge (eager attention, so its patterns are cached); only the
    residual stream, the attention pattern, values and ``hook_z`` of each block are kept.
    Decoding the top tokens costs ``n_layers * (2 + position + 1)`` rows of ``d_model x d_vocab``
    multiply-adds (``k=0`` skips it).

    Args:
        model: a ``TransformerBridge`` with an RMSNorm final norm and no logit soft-cap.
        prompt: the text.
        target: one token (a string or an id).
        versus: optional second token: read ``logit(target) - logit(versus)``.
        position: the position read (default: the last); sources are positions ``0..position``.
        k: top tokens per output (0: none).
        prepend_bos: prepend BOS; ``None`` uses the model's default.

    Returns:
        A :class:`ComponentLens`.

    Raises:
        InputError: an empty prompt, a bad token or position, ``k < 0``, a soft-capped output, a
            norm that is not an RMSNorm, or heads that do not add up to the attention output.
    """
    if not isinstance(prompt, str) or not prompt:
        raise InputError(f"prompt must be a non-empty string, got {prompt!r}")
    if output_transform(model) is not None:
        raise InputError("this model transforms its logits after the unembedding (e.g. soft-capping), which is not "
                         "linear, so its components' logits would not add up; not supported.")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise InputError(f"k must be a non-negative int, got {k!r}")
    if isinstance(position, bool) or not isinstance(position, int):
        raise InputError(f"position must be an int, got {position!r}")
    target_id = token_id(model, target, "target")
    versus_id = None if versus is None else token_id(model, versus, "versus")
    tokens = tokenize(model, prompt, prepend_bos)
    q = int(resolve_positions(position, tokens.numel())[0])
    n_layers = int(model.cfg.n_layers)
    names = [f"blocks.{l}.{name}" for l in range(n_layers) for name in
             ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "attn.hook_pattern", "attn.hook_v", "attn.hook_z")]
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens.view(1, -1).to(model.W_U.device), names_filter=names)
        x = cache[f"blocks.{n_layers - 1}.hook_resid_post"][0, q]
        scale, gain = final_norm(model, x)
        direction, constant = unembed_direction(model, target_id, versus_id)
        readout = (gain.double() * direction.double()) / scale.double()  # [d_model]
        attn_out, mlp_out, parts, pattern = [], [], [], []
        for l in range(n_layers):
            pre, mid, post = (cache[f"blocks.{l}.hook_resid_{s}"][0, q] for s in ("pre", "mid", "post"))
            attn_out.append(mid - pre)
            mlp_out.append(post - mid)
            heads, weights = _attention_parts(model, cache, l, q, mid - pre)
            parts.append(heads)
            pattern.append(weights)
        embed = cache["blocks.0.hook_resid_pre"][0, q]
        del cache
        blocks = torch.stack([torch.stack(attn_out), torch.stack(mlp_out)], 1).double()  # [layer, 2, d_model]
        by_source = torch.stack(parts)  # [layer, head, src, d_model], float64
        final = logits[0, q].double()
        total = final[target_id] - (final[versus_id] if versus_id is not None else 0.0)
        decode = Decoder(model.tokenizer)
        read = gain.double() / scale.double()
        top_logits, top_ids = _top(model, blocks * read, k)
        source_logits, source_ids = _top(model, by_source.sum(1) * read, k)
    post = has_post_attention_norm(model)
    return ComponentLens(
        position=q,
        attn=(blocks[:, 0] @ readout).float().cpu(),
        mlp=(blocks[:, 1] @ readout).float().cpu(),
        embed=float(embed.double() @ readout),
        constant=float(constant),
        total=float(total),
        scale=float(scale),
        attn_by_source=(by_source @ readout).float().cpu(),
        attention=torch.stack(pattern).float().cpu(),
        top_tokens=[[decode.each(ids) for ids in layer] for layer in top_ids.tolist()],
        top_logits=top_logits.float().cpu(),
        source_top_tokens=[[decode.each(ids) for ids in layer] for layer in source_ids.tolist()],
        source_top_logits=source_logits.float().cpu(),
        str_tokens=decode.each(tokens.tolist()),
        target_token=decode.one(target_id),
        versus_token=None if versus_id is None else decode.one(versus_id),
        linearisation=FINAL_SCALE + (f"; {POST_ATTENTION_SCALE}" if post else ""),
        model_name=bridge.model_name(model),
    )


def _attention_parts(model, cache, layer: int, q: int, contribution: Tensor) -> tuple[Tensor, Tensor]:
    """``([head, src, d_model] float64, [head, src])``: head ``h``'s output at ``q`` from each
    source position, as it enters the residual stream, and the pattern; checked to add up to
    ``contribution`` (what the block's attention added at ``q``)."""
    attn = model.blocks[layer].attn
    pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0, :, q, : q + 1].double()  # [head, src]
    v = cache[f"blocks.{layer}.attn.hook_v"][0, : q + 1].double()  # [src, kv_head, d_head]
    w_o = attn.W_O.double()  # [head, d_head, d_model]
    n_heads = w_o.shape[0]
    v = v.repeat_interleave(n_heads // v.shape[1], dim=1)  # the key-value head each head reads
    parts = torch.einsum("hk,khd,hdm->hkm", pattern, v, w_o)
    z = cache[f"blocks.{layer}.attn.hook_z"][0, q].double()  # [head, d_head]
    raw = torch.einsum("hd,hdm->m", z, w_o)
    b_o = getattr(attn, "b_O", None)
    if b_o is not None:
        raw = raw + b_o.double()
    _check_close(parts.sum((0, 1)) + (0 if b_o is None else b_o.double()), raw, layer, "pattern x values")
    if has_post_attention_norm(model):
        scale, gain = frozen_rms_norm(model.blocks[layer].ln1_post, raw.to(contribution.dtype),
                                      float(getattr(model.cfg, "eps", 1e-6)), "post-attention norm")
        factor = gain.double() / scale.double()
        parts, raw = parts * factor, raw * factor
    _check_close(raw, contribution.double(), layer, "hook_z @ W_O")
    return parts, pattern


def _check_close(mine: Tensor, theirs: Tensor, layer: int, how: str) -> None:
    error = float((mine - theirs).abs().max())
    bound = 1e-3 * max(float(theirs.abs().max()), 1.0)
    if error > bound:
        raise InputError(
            f"block {layer}: the attention output rebuilt from {how} differs from the model's by {error:.2e}; "
            "the split by head and source is not exact for this model."
        )


def _top(model, rows: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-``k`` logits and ids of ``rows @ W_U`` (``[..., d_model]`` float64 rows, already
    scaled by ``g / s``; no ``b_U``), one block of rows at a time."""
    shape = rows.shape[:-1]
    if k == 0:
        return torch.zeros(*shape, 0), torch.zeros(*shape, 0, dtype=torch.long)
    flat = rows.reshape(-1, rows.shape[-1])
    w_u = model.W_U.detach()
    values, ids = [], []
    for start in range(0, flat.shape[0], 16):
        logits = flat[start : start + 16].to(w_u.dtype) @ w_u
        top = logits.float().topk(min(k, logits.shape[-1]), dim=-1)
        values.append(top.values.cpu())
        ids.append(top.indices.cpu())
    return torch.cat(values).view(*shape, -1), torch.cat(ids).view(*shape, -1)
