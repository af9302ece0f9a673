"""What ``logit_lens(lens=...)`` accepts: a translator of the raw residual stream.

A translator maps each layer's raw (un-normalised) residual stream to the stream the final
norm and unembedding should decode. :class:`lenslib.TunedLens` is one; anything with the two
methods below is another (the engine never imports a particular method).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Protocol, Sequence, runtime_checkable

from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens.ActivationCache import ActivationCache
    from transformer_lens.model_bridge import TransformerBridge


@runtime_checkable
class Translator(Protocol):
    def check_model(self, model: "TransformerBridge") -> None:
        """Raise (with a message naming both) if the translator is not for ``model``."""

    def translate(
        self, stack: Float[Tensor, "layer *rows d_model"], labels: Sequence[str]
    ) -> Float[Tensor, "layer *rows d_model"]:
        """Translate each entry of a raw ``accumulated_resid`` stack; ``labels`` name the entries."""


def decode_ready_stack(
    model: "TransformerBridge",
    cache: "ActivationCache",
    stack: Float[Tensor, "layer *rows d_model"],
    labels: Sequence[str],
    translator: Optional[Translator],
) -> Float[Tensor, "layer *rows d_model"]:
    """Translate a raw ``accumulated_resid`` stack, then apply ``ln_final`` exactly as
    ``accumulated_resid(apply_ln=True)`` does (``cache.apply_ln_to_stack`` with recomputed
    statistics), so identity translators give the logit lens bit for bit."""
    if translator is not None:
        translator.check_model(model)
        stack = translator.translate(stack, labels)
    return cache.apply_ln_to_stack(
        stack, int(model.cfg.n_layers), has_batch_dim=cache.has_batch_dim, recompute_ln=True
    )
