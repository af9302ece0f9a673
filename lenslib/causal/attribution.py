"""Direct logit attribution: how much each block's attention and MLP write into one logit.

The model's final logit for a token ``t`` at the last position is
``logit(t) = (x / s) * g @ W_U[:, t] + b_U[t]``, where ``x`` is the final residual stream
(``blocks.{L-1}.hook_resid_post``), ``g`` the final RMSNorm's gain and ``s = rms(x)`` its scale.
The residual stream is a sum of what each part writes into it,
``x = embed + sum_l (attn_l + mlp_l)``, read from the cache as ``resid_pre[0]``,
``resid_mid[l] - resid_pre[l]`` and ``resid_post[l] - resid_mid[l]``. **Freezing the final
position's scale** ``s`` (the standard linearisation of direct logit attribution) makes the logit
linear in those parts: each contributes ``(part / s) * g @ W_U[:, t]``, and the contributions
plus ``b_U[t]`` add up to the logit exactly. Gemma 3's extra norms inside each block
(after attention and after the MLP) are part of what the block writes, so they are included.

No ``enable_compatibility_mode()`` is needed: only three residual hooks per block are cached,
at the last position.

>>> import lenslib
>>> from lenslib.causal.attribution import attribute
>>> model = lenslib.load_model("tiny-llama")
>>> result = attribute(model, "abc", target="d")
>>> result.component_labels[:3]
['embed', '0_attn', '0_mlp']
>>> abs(float(result.contributions.sum()) + result.constant - result.total) < 1e-4
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import torch
from jaxtyping import Float
from torch import Tensor

from lenslib.core import bridge
from lenslib.core.bridge import last_logits_only, output_transform
from lenslib.core.tokens import Decoder, Token, token_id, tokenize
from lenslib.errors import InputError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

LINEARISATION = "final norm scale frozen at the last position"


@dataclass
class Attribution:
    """Direct logit attribution of one prompt's last position (units: logits, i.e. nats of
    unnormalised log-probability; a logit *difference* when ``versus`` was given).

    Attributes:
        component_labels: one name per component: ``"embed"``, then ``"{l}_attn"`` and
            ``"{l}_mlp"`` per block (``"{l}_attn_h{h}"`` per head when ``per_head=True``).
        contributions: ``[component]`` each component's direct contribution, final norm scale
            frozen (see the module docstring).
        constant: what no component writes: ``b_U[target] - b_U[versus]`` (0 without a bias).
        total: the model's own final logit of ``target`` (minus that of ``versus``).
        scale: the frozen final-norm scale ``s = sqrt(mean(x**2) + eps)`` of the last position.
        target_token, versus_token: the tokens as strings (``versus_token`` is None without).
        block: ``[component]`` the block each component belongs to (-1 for the embeddings).
        kind: ``[component]`` ``"embed"``, ``"attn"`` or ``"mlp"``.
        str_tokens: the prompt's tokens as run, BOS included.
        model_name: the model's name.
    """

    component_labels: list[str]
    contributions: Float[Tensor, "component"]
    constant: float
    total: float
    scale: float
    target_token: str
    versus_token: Optional[str]
    block: list[int]
    kind: list[str]
    str_tokens: list[str] = field(default_factory=list)
    model_name: str = ""

    @property
    def residual(self) -> float:
        """``total - contributions.sum() - constant``: float rounding only (the sum check)."""
        return self.total - float(self.contributions.double().sum()) - self.constant

    def top(self, n: int = 5) -> list[tuple[str, float]]:
        """The ``n`` components with the largest absolute contribution, largest first."""
        order = self.contributions.abs().argsort(descending=True)[:n].tolist()
        return [(self.component_labels[i], float(self.contributions[i])) for i in order]

    def by_layer(self) -> Float[Tensor, "block kind"]:
        """``[n_layers, 2]`` attention and MLP contributions per block (heads summed)."""
        n_blocks = max(self.block) + 1
        out = torch.zeros(n_blocks, 2)
        for value, block, kind in zip(self.contributions.tolist(), self.block, self.kind):
            if kind in ("attn", "mlp"):
                out[block, 0 if kind == "attn" else 1] += value
        return out

    def to_frame(self):
        """A ``pandas.DataFrame``: one row per component (``component``, ``block``, ``kind``,
        ``contribution``)."""
        import pandas as pd

        return pd.DataFrame({"component": self.component_labels, "block": self.block, "kind": self.kind,
                             "contribution": self.contributions.tolist()})

    def to_dict(self) -> dict:
        """Every field as plain Python values, for JSON (with the linearisation stated)."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["contributions"] = self.contributions.tolist()
        out["residual"] = self.residual
        out["linearisation"] = LINEARISATION
        return out

    def __repr__(self) -> str:
        what = repr(self.target_token) + (f" - {self.versus_token!r}" if self.versus_token else "")
        tops = ", ".join(f"{label} {value:+.2f}" for label, value in self.top(5))
        return (f"Attribution(logit {what} = {self.total:.3f}; top: {tops}; "
                f"constant {self.constant:.3f}; {LINEARISATION})")

    def __str__(self) -> str:
        """The total, the sum check and the ten largest components, one per line."""
        what = repr(self.target_token) + (f" - {self.versus_token!r}" if self.versus_token else "")
        lines = [f"direct logit attribution{f' of {self.model_name}' if self.model_name else ''}: "
                 f"logit {what} at the last position ({LINEARISATION})",
                 f"total {self.total:.4f} = components {float(self.contributions.double().sum()):.4f} "
                 f"+ constant {self.constant:.4f} (residual {self.residual:.1e})"]
        lines += [f"  {label:<14} {value:+9.4f}" for label, value in self.top(10)]
        return "\n".join(lines)


def attribute(
    model: "TransformerBridge",
    prompt: str,
    *,
    target: Token,
    versus: Optional[Token] = None,
    per_head: bool = False,
    prepend_bos: Optional[bool] = None,
) -> Attribution:
    """Attribute the last position's logit of ``target`` (minus ``versus``) to the model's parts.

    Args:
        model: a ``TransformerBridge`` (see :func:`lenslib.load_model`); its final norm must be
            an RMSNorm and its logits not soft-capped (a cap is not linear).
        prompt: the text; the last position's prediction is attributed.
        target: one token, as a string (``" Paris"``, leading space included) or an id.
        versus: optional second token: attribute ``logit(target) - logit(versus)``.
        per_head: split each attention block into its heads (``hook_z @ W_O`` per head). Exact
            only where heads add linearly into the stream (Llama, SmolLM2); refused for
            architectures with a norm after attention (Gemma 2/3).
        prepend_bos: prepend BOS; ``None`` uses the model's default.

    Returns:
        An :class:`Attribution`; ``contributions.sum() + constant == total`` up to float
        rounding.

    Raises:
        ValueError: empty prompt or token, a token of several pieces, per-head on Gemma, an
            unsupported final norm or a soft-capped output.
    """
    if not isinstance(prompt, str) or not prompt:
        raise InputError(f"prompt must be a non-empty string, got {prompt!r}")
    if output_transform(model) is not None:
        raise InputError(
            "this model transforms its logits after the unembedding (e.g. soft-capping), which is "
            "not linear, so a direct logit attribution would not add up; not supported."
        )
    target_id = token_id(model, target, "target")
    versus_id = None if versus is None else token_id(model, versus, "versus")
    if per_head and has_post_attention_norm(model):
        raise InputError(
            "per-head attribution is not exact for this architecture: it normalises the attention "
            "output after mixing the heads (Gemma's post-attention RMSNorm), so heads do not add "
            "into the residual stream. Use per_head=False (whole attention blocks are exact)."
        )
    tokens = tokenize(model, prompt, prepend_bos)
    n_layers = int(model.cfg.n_layers)
    names = [f"blocks.{l}.hook_resid_{k}" for l in range(n_layers) for k in ("pre", "mid", "post")]
    if per_head:
        names += [f"blocks.{l}.attn.hook_z" for l in range(n_layers)]
    with torch.no_grad():
        logits, cache = model.run_with_cache(
            tokens.view(1, -1).to(model.W_U.device), names_filter=names, **last_logits_only(model)
        )
        parts, labels, layers, kinds = _components(model, cache, n_layers, per_head)
        x = cache[f"blocks.{n_layers - 1}.hook_resid_post"][0, -1]
        del cache
        direction, constant = unembed_direction(model, target_id, versus_id)
        scale, gain = final_norm(model, x)
        readout = (gain * direction) / scale  # [d_model]
        contributions = parts.double() @ readout.double()
        final = logits[0, -1].double()
        total = final[target_id] - (final[versus_id] if versus_id is not None else 0.0)
    decode = Decoder(model.tokenizer)
    return Attribution(
        component_labels=labels,
        contributions=contributions.float().cpu(),
        constant=float(constant),
        total=float(total),
        scale=float(scale),
        target_token=decode.one(target_id),
        versus_token=None if versus_id is None else decode.one(versus_id),
        block=layers,
        kind=kinds,
        str_tokens=decode.each(tokens.tolist()),
        model_name=bridge.model_name(model),
    )


def has_post_attention_norm(model) -> bool:
    """Whether the model normalises the attention output after mixing its heads (Gemma 2/3's
    post-attention RMSNorm), so that heads do not add into the residual stream one by one."""
    return hasattr(model.blocks[0], "ln1_post") or "blocks.0.ln1_post.hook_scale" in model.hook_dict


def _components(model, cache, n_layers: int, per_head: bool):
    """``[component, d_model]`` what each part writes at the last position, with labels."""
    parts = [cache["blocks.0.hook_resid_pre"][0, -1]]
    labels, layers, kinds = ["embed"], [-1], ["embed"]
    for l in range(n_layers):
        pre = cache[f"blocks.{l}.hook_resid_pre"][0, -1]
        mid = cache[f"blocks.{l}.hook_resid_mid"][0, -1]
        post = cache[f"blocks.{l}.hook_resid_post"][0, -1]
        attn = mid - pre
        if per_head:
            z = cache[f"blocks.{l}.attn.hook_z"][0, -1]  # [head, d_head]
            w_o = model.blocks[l].attn.W_O  # [head, d_head, d_model]
            heads = torch.einsum("hd,hdm->hm", z.to(w_o.dtype), w_o)
            b_o = getattr(model.blocks[l].attn, "b_O", None)
            if b_o is not None and bool(torch.any(b_o != 0)):
                heads = torch.cat([heads, b_o.view(1, -1)])
                labels += [f"{l}_attn_h{h}" for h in range(heads.shape[0] - 1)] + [f"{l}_attn_bias"]
            else:
                labels += [f"{l}_attn_h{h}" for h in range(heads.shape[0])]
            _check_heads_add_up(heads, attn, l)
            parts += list(heads)
            layers += [l] * heads.shape[0]
            kinds += ["attn"] * heads.shape[0]
        else:
            parts.append(attn)
            labels.append(f"{l}_attn")
            layers.append(l)
            kinds.append("attn")
        parts.append(post - mid)
        labels.append(f"{l}_mlp")
        layers.append(l)
        kinds.append("mlp")
    return torch.stack(parts), labels, layers, kinds


def _check_heads_add_up(heads: Tensor, attn: Tensor, layer: int) -> None:
    error = float((heads.sum(0) - attn).abs().max())
    bound = 1e-3 * max(float(attn.abs().max()), 1.0)
    if error > bound:
        raise InputError(
            f"block {layer}: the per-head outputs (hook_z @ W_O) do not add up to the attention "
            f"output (max error {error:.2e}); per-head attribution is not exact for this model."
        )


def unembed_direction(model, target_id: int, versus_id: Optional[int]) -> tuple[Tensor, float]:
    """``(W_U[:, target] - W_U[:, versus], b_U[target] - b_U[versus])``: the ``[d_model]``
    direction a normalised stream is read along, and the bias (``versus`` optional, 0 without
    a bias)."""
    w_u = model.W_U
    b_u = getattr(model, "b_U", None)
    direction = w_u[:, target_id].clone()
    constant = 0.0 if b_u is None else float(b_u[target_id])
    if versus_id is not None:
        direction = direction - w_u[:, versus_id]
        constant -= 0.0 if b_u is None else float(b_u[versus_id])
    return direction, constant


def final_norm(model, x: Tensor) -> tuple[Tensor, Tensor]:
    """The frozen scale ``s`` of ``x`` and the final RMSNorm's gain ``g`` ([d_model]): see
    :func:`frozen_rms_norm` (applied to ``model.ln_final``)."""
    return frozen_rms_norm(model.ln_final, x, float(getattr(model.cfg, "eps", 1e-6)), "final norm")


def frozen_rms_norm(norm, x: Tensor, eps: float, what: str) -> tuple[Tensor, Tensor]:
    """``(s, g)``: the scale ``s = sqrt(mean(x**2) + eps)`` of one ``[d_model]`` vector ``x`` and
    the gain ``g`` ([d_model]) of the RMSNorm module ``norm``, so that ``norm(x) == x * g / s``.

    ``g`` is read off the module itself (``norm(ones) * sqrt(1 + eps)``), so Llama's
    ``weight`` and Gemma's ``1 + weight`` are both handled; then ``norm(x) == x * g / s`` is
    checked, so a norm of another kind (LayerNorm's centring) fails loudly instead of skewing.
    ``what`` names the norm in that error.
    """
    ones = torch.ones(1, 1, x.numel(), dtype=x.dtype, device=x.device)
    gain = norm(ones)[0, 0] * (1.0 + eps) ** 0.5
    scale = (x.double().pow(2).mean() + eps).sqrt().to(x.dtype)
    expected = norm(x.view(1, 1, -1))[0, 0].float()
    # a few units in the last place of the model's dtype: 1e-3 relative in float32, ~3% in bfloat16
    tol = max(1e-3, 4 * torch.finfo(x.dtype).eps)
    mine = x.float() * gain.float() / scale.float()
    if not torch.allclose(mine, expected, rtol=tol, atol=0.1 * tol * float(expected.abs().max())):
        raise InputError(
            f"the {what} ({type(getattr(norm, '_original_component', norm)).__name__}) is not "
            "an RMSNorm x * g / rms(x); direct logit attribution supports RMSNorm models only."
        )
    return scale, gain
