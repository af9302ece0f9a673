"""One batch of the lens: a forward pass, the chosen rows of the stream, tiled statistics, results.

:func:`lens_batch` is what :func:`lenslib.logit_lens` and the multi-token path
(:mod:`lenslib.lens.answers`) run for each batch of already tokenized prompts. It is split into
three steps a reader can follow: :func:`decoded_rows` (forward pass -> normalised stream rows),
:func:`lenslib.core.stats.lens_stats` (rows -> statistics over the full vocabulary, tile by tile)
and :func:`to_results` (statistics -> one :class:`LensResult` per prompt).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lenslib.core.bridge import model_name, output_transform, residual_hooks
from lenslib.core.forward import residual_cache
from lenslib.core.gc_pause import collection_paused
from lenslib.core.stats import LensStats, lens_stats
from lenslib.core.tokens import Decoder, pad_batch
from lenslib.core.translator import Translator, decode_ready_stack
from lenslib.lens.result import LensResult

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


@torch.no_grad()
def lens_batch(
    model: "TransformerBridge",
    tokens: Sequence[Int[Tensor, "pos"]],
    chosen: Sequence[Int[Tensor, "chosen"]],
    target_ids: Sequence[Int[Tensor, "chosen"]],
    targets: Sequence,
    *,
    k: int,
    incl_mid: bool,
    chunk_bytes: int,
    forward: str = "auto",
    lens: Optional[Translator] = None,
) -> list[LensResult]:
    """Lens a batch of tokenized prompts at their chosen positions.

    Args:
        tokens: each prompt's ids, BOS included.
        chosen: each prompt's positions to decode (indices into its tokens).
        target_ids: each prompt's tracked token per chosen position (-1: none).
        targets: each prompt's target as the user gave it (``None`` = the next input token),
            for the result's label.
        k, incl_mid, chunk_bytes, forward, lens: as in :func:`lenslib.logit_lens`.

    Returns:
        One :class:`LensResult` per prompt.
    """
    rows, labels, forward_path = decoded_rows(model, tokens, chosen, incl_mid=incl_mid, forward=forward, lens=lens)
    stats = lens_stats(
        rows,
        model.W_U,
        getattr(model, "b_U", None),
        torch.cat(list(target_ids)),
        k=k,
        output_transform=output_transform(model),
        chunk_bytes=chunk_bytes,
    )
    return to_results(model, stats, tokens, chosen, target_ids, targets, labels, forward_path)


def decoded_rows(
    model: "TransformerBridge",
    tokens: Sequence[Int[Tensor, "pos"]],
    chosen: Sequence[Int[Tensor, "chosen"]],
    *,
    incl_mid: bool,
    forward: str,
    lens: Optional[Translator],
) -> tuple[Float[Tensor, "layer rows d_model"], list[str], str]:
    """Run the batch once and return the normalised stream at every prompt's chosen positions,
    concatenated in prompt order (``[layer, sum of chosen, d_model]``, ``ln_final`` applied as
    ``accumulated_resid(apply_ln=True)`` does, after ``lens`` where one is given), the layer
    labels, and the forward path that ran (``"sdpa"`` or ``"bridge"``)."""
    batch, mask = pad_batch(model, tokens)
    device = model.W_U.device
    pos_slice = None
    if len(tokens) == 1 and chosen[0].numel() == 1:
        pos_slice = int(chosen[0][0])  # cache one position only: the cheapest "last" lens
    cache, forward_path = residual_cache(
        model,
        batch.to(device),
        residual_hooks(int(model.cfg.n_layers), incl_mid),
        attention_mask=mask.to(device),
        pos_slice=pos_slice,
        forward=forward,
    )
    stack, labels = cache.accumulated_resid(apply_ln=lens is None, incl_mid=incl_mid, return_labels=True)
    if lens is not None:  # translate the raw stream, then ln_final as apply_ln=True does
        stack = decode_ready_stack(model, cache, stack, labels, lens)
    del cache
    if pos_slice is not None:
        return stack[:, 0, 0:1], list(labels), forward_path
    rows = [chosen_rows(stack[:, i], chosen[i]) for i in range(len(tokens))]
    return (rows[0] if len(rows) == 1 else torch.cat(rows, dim=1)), list(labels), forward_path


def chosen_rows(stack: Float[Tensor, "layer pos d_model"], positions: Int[Tensor, "chosen"]) -> Tensor:
    """``stack[:, positions]``: a view when the positions are all of them in order (the usual
    all-positions lens), so that the stream is not copied."""
    n_pos = stack.shape[1]
    if positions.numel() == n_pos and bool((positions == torch.arange(n_pos)).all()):
        return stack
    return stack[:, positions.to(stack.device)]


def to_results(
    model: "TransformerBridge",
    stats: LensStats,
    tokens: Sequence[Tensor],
    chosen: Sequence[Tensor],
    target_ids: Sequence[Tensor],
    targets: Sequence,
    labels: list[str],
    forward_path: str,
) -> list[LensResult]:
    """Cut the batch's statistics (``[layer, rows, ...]``) back into one result per prompt."""
    decode = Decoder(model.tokenizer)
    results, offset = [], 0
    # top_tokens is a list per layer and position (tens of thousands of small lists for a long
    # prompt): building them with the cyclic collector on sets off full collections.
    with collection_paused():
        for ids, pos, tgt_ids, tgt in zip(tokens, chosen, target_ids, targets):
            span = slice(offset, offset + pos.numel())
            offset += pos.numel()
            top_ids = stats.top_ids[:, span]
            results.append(
                LensResult(
                    input_ids=ids,
                    str_tokens=decode.each(ids.tolist()),
                    positions=pos,
                    layer_labels=list(labels),
                    top_ids=top_ids,
                    top_probs=stats.top_probs[:, span],
                    top_tokens=[[decode.each(row) for row in layer] for layer in top_ids.tolist()],
                    entropy=stats.entropy[:, span],
                    kl_to_final=stats.kl_to_final[:, span],
                    target_ids=tgt_ids,
                    target_prob=stats.target_prob[:, span],
                    target_logprob=stats.target_logprob[:, span],
                    target_rank=stats.target_rank[:, span],
                    target_tokens=[decode.one(t) if t >= 0 else "" for t in tgt_ids.tolist()],
                    target_label="next token" if tgt is None else repr(decode.one(int(tgt_ids[0]))),
                    model_name=model_name(model),
                    forward_path=forward_path,
                )
            )
    return results
