"""What every method needs to know about a ``TransformerBridge``: hook names, forward options,
the output transform and the unembedding.

>>> import lenslib
>>> from lenslib.core.bridge import residual_hooks
>>> residual_hooks(2, incl_mid=False)     # what accumulated_resid(apply_ln=True) stacks
['blocks.0.hook_resid_pre', 'blocks.1.hook_resid_pre', 'blocks.1.hook_resid_post']
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Callable, Optional

from jaxtyping import Float, Int
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def model_name(model: "TransformerBridge") -> str:
    """The model's name as TransformerLens records it (``cfg.model_name``), or ``""``."""
    return str(getattr(model.cfg, "model_name", ""))


def residual_hooks(n_layers: int, incl_mid: bool = False) -> list[str]:
    """The residual-stream hook names that ``accumulated_resid`` stacks, in its order of layers:
    ``blocks.{l}.hook_resid_pre`` per block (``hook_resid_mid`` too with ``incl_mid``) and the
    last block's ``hook_resid_post``."""
    names = [f"blocks.{l}.hook_resid_pre" for l in range(n_layers)]
    if incl_mid:
        names += [f"blocks.{l}.hook_resid_mid" for l in range(n_layers)]
    return names + [f"blocks.{n_layers - 1}.hook_resid_post"]


def last_logits_only(model: "TransformerBridge") -> dict:
    """Forward keyword arguments that ask the Hugging Face model for the last position's logits
    only (``logits_to_keep=1``), where it takes them: the lens makes its own logits."""
    hf_model = getattr(model, "original_model", None)
    if hf_model is not None and "logits_to_keep" in inspect.signature(hf_model.forward).parameters:
        return {"logits_to_keep": 1}
    return {}


def output_transform(model: "TransformerBridge") -> Optional[Callable[[Tensor], Tensor]]:
    """The model's post-unembedding transform (e.g. Gemma 2's logit soft-cap), or ``None`` when
    it is the identity."""
    from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter
    from transformer_lens.utilities.activation_functions import softcap_enabled

    adapter = getattr(model, "adapter", None)
    transform = getattr(adapter, "apply_output_logits_transform", None)
    if transform is None:
        return None
    inherited = type(adapter).apply_output_logits_transform is ArchitectureAdapter.apply_output_logits_transform
    if inherited and not softcap_enabled(getattr(adapter.cfg, "output_logits_soft_cap", None)):
        return None  # TransformerLens writes -1.0 for "no soft-cap"
    return transform


def unembed(
    model: "TransformerBridge",
    rows: Float[Tensor, "row d_model"],
    columns: Optional[Int[Tensor, "col"]] = None,
) -> Float[Tensor, "row col"]:
    """Logits of normalised rows: ``rows @ W_U (+ b_U)``, then the model's output transform, on
    every vocabulary column or only ``columns``. Dense: for a full-vocabulary lens over many rows
    use :func:`lenslib.core.stats.lens_stats`, which never holds ``[row, d_vocab]``."""
    W_U, b_U = model.W_U, getattr(model, "b_U", None)
    if columns is not None:
        W_U = W_U[:, columns]
        b_U = None if b_U is None else b_U[columns]
    out = rows @ W_U.detach()
    if b_U is not None:
        out = out + b_U.detach()
    transform = output_transform(model)
    return out if transform is None else transform(out)
