"""Logit-lens statistics from the normalised residual stream, one cache-sized tile at a time.

The naive lens materialises ``[layer, pos, d_vocab]`` logits (for gemma-3-270m at 128 tokens,
19 x 128 x 262,144 fp32 values: 2.5 GB, before its log-probabilities and their exponentials). Here the ``[pos, layer]`` rows are decoded in blocks of positions, and each block
against the vocabulary in tiles of columns (:func:`tile_shape`):

1. ``tile = rows @ W_U[:, cols] + b_U[cols]`` (one matmul: by oneDNN on CPU where it applies,
   see :mod:`lenslib.core.onednn`, else ``torch.mm`` into a reused buffer; this matmul is the cost
   floor), then the model's own output transform if it has one (e.g. soft-capping);
2. the tile is folded into running statistics (:mod:`lenslib.core.tile_update`): top-k, an online
   softmax's max and sums, the KL's cross term against the final layer's weights, and the
   target's rank, by the fused C kernel on CPU (:mod:`lenslib.core.native_kernel`) or by torch.

The tile (``chunk_bytes``, 16 MiB by default) stays in the CPU's cache between the matmul that
writes it and the reductions that read it. Extra memory is at most two tiles (oneDNN returns a
new one while the last is still held) plus O(pos x layer x k) for the results, whatever the
prompt length.

The target's logit is computed before the tiles (a dot product per row, in float64) so that its
rank can be counted tile by tile: rank = 1 + #{v != target : z_v > z_target}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lenslib.core import native_kernel
from lenslib.core.onednn import Backend, matmul_backend, tile_matmul
from lenslib.core.tile_update import RunningStats, torch_tile_update

DEFAULT_CHUNK_BYTES = 16 * 2**20  # a tile that stays in a 32 MiB L3 cache
TILE_COLUMNS = 2048  # vocabulary columns per tile, when the budget allows


@dataclass
class LensStats:
    """Per layer x position statistics of the lens. CPU tensors; information in nats."""

    top_ids: Int[Tensor, "layer pos k"]
    top_probs: Float[Tensor, "layer pos k"]
    entropy: Float[Tensor, "layer pos"]
    kl_to_final: Float[Tensor, "layer pos"]
    target_logprob: Float[Tensor, "layer pos"]  # NaN where the target is -1
    target_prob: Float[Tensor, "layer pos"]  # NaN where the target is -1
    target_rank: Int[Tensor, "layer pos"]  # 1 = top; 0 where the target is -1


def tile_shape(n_layer: int, d_vocab: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> tuple[int, int]:
    """``(positions, columns)`` of one tile: ``[positions x n_layer, columns]`` fp32 logits.

    Up to :data:`TILE_COLUMNS` columns, then as many positions as fit in ``chunk_bytes`` (at
    least one; with a tiny budget, fewer columns).

    >>> tile_shape(19, 262144)   # gemma-3-270m: 107 positions x 19 layers x 2048 columns = 15.9 MiB
    (107, 2048)
    >>> tile_shape(3, 64, chunk_bytes=1)
    (1, 1)
    """
    columns = max(1, min(d_vocab, TILE_COLUMNS, chunk_bytes // (4 * n_layer)))
    return max(1, chunk_bytes // (4 * n_layer * columns)), columns


@torch.no_grad()
def lens_stats(
    normalised_resid: Float[Tensor, "layer pos d_model"],
    W_U: Float[Tensor, "d_model d_vocab"],
    b_U: Optional[Float[Tensor, "d_vocab"]],
    target_ids: Int[Tensor, "pos"],
    *,
    k: int,
    output_transform: Optional[Callable[[Tensor], Tensor]] = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> LensStats:
    """Decode every layer x position and reduce to statistics, never holding a row's logits.

    Args:
        normalised_resid: the residual stream after the final norm (``ln_final``), one row per
            layer; the last layer must be the model's final residual stream, since KL is taken
            to it.
        W_U, b_U: the unembedding (``b_U`` may be None).
        target_ids: one token id per position, or -1 for none.
        k: how many top tokens to keep (1 <= k <= d_vocab).
        output_transform: an elementwise transform applied to the logits before the softmax
            (the model's own, if any).
        chunk_bytes: budget for one tile of fp32 logits (see :func:`tile_shape`).

    Returns:
        :class:`LensStats` with ``[layer, pos]`` tensors on the CPU, computed in float32 with
        float64 sums.
    """
    n_layer, n_pos, d_model = normalised_resid.shape
    d_vocab = W_U.shape[1]
    device = W_U.device
    block, columns = tile_shape(n_layer, d_vocab, chunk_bytes)
    b_U = effective_bias(b_U)
    update = torch_tile_update
    if device.type == "cpu" and native_kernel.available():
        update = native_kernel.native_tile_update

    rows_by_pos = normalised_resid.transpose(0, 1)  # [pos, layer, d_model]
    targets = target_ids.to(device)
    buffer = torch.empty(min(block, n_pos) * n_layer * columns, device=device)
    parts: list[dict[str, Tensor]] = []
    for start in range(0, n_pos, block):
        stop = min(start + block, n_pos)
        rows = rows_by_pos[start:stop].reshape(-1, d_model).to(W_U.dtype)
        block_targets = targets[start:stop]
        target_logits = _target_logits(rows_by_pos[start:stop], W_U, b_U, block_targets, output_transform)
        state = RunningStats.empty(stop - start, n_layer, k, device=device)
        for col0, tile in column_tiles(rows, W_U, b_U, columns, buffer, output_transform):
            update(tile.view(stop - start, n_layer, -1), col0, block_targets, target_logits, state)
        parts.append(state.finish(block_targets))
    return LensStats(**{
        name: torch.cat([part[name] for part in parts]).transpose(0, 1).contiguous().cpu()
        for name in parts[0]
    })


def effective_bias(b_U: Optional[Tensor]) -> Optional[Tensor]:
    """``b_U``, or None when it is all zeros (TransformerLens gives bias-free models a zero
    ``b_U``; adding it would be a wasted pass over every tile)."""
    return None if b_U is None or not bool(b_U.any()) else b_U


def column_tiles(
    rows: Float[Tensor, "row d_model"],
    W_U: Float[Tensor, "d_model d_vocab"],
    b_U: Optional[Float[Tensor, "d_vocab"]],
    columns: int,
    buffer: Float[Tensor, "n"],
    output_transform: Optional[Callable[[Tensor], Tensor]] = None,
    backend: Optional[Backend] = None,
) -> Iterator[tuple[int, Float[Tensor, "row cols"]]]:
    """Yield ``(col0, rows @ W_U[:, col0:col0 + columns] + b_U[...])``, transformed, as float32.

    A tile is valid until the next one. Float32 tiles come from
    :func:`lenslib.core.onednn.tile_matmul`: a fresh tensor from oneDNN (CPU, where it applies;
    the tile being read and the next one then coexist), else written into ``buffer`` (at least
    ``rows x columns`` floats). The benchmark's floor runs exactly these matmuls. ``backend``
    overrides :func:`~lenslib.core.onednn.matmul_backend`'s choice for float32 (the benchmark's
    ``torch.mm`` floor).
    """
    d_vocab = W_U.shape[1]
    if W_U.dtype != torch.float32:
        backend = None
    elif backend is None:
        backend = matmul_backend(rows, W_U)
    for col0 in range(0, d_vocab, columns):
        col1 = min(col0 + columns, d_vocab)
        out = buffer[: rows.shape[0] * (col1 - col0)].view(rows.shape[0], col1 - col0)
        if backend is not None:
            tile = tile_matmul(rows, W_U, b_U, col0, col1, out, backend)
            yield col0, tile if output_transform is None else out.copy_(output_transform(tile))
            del tile
            continue
        weight = W_U[:, col0:col1]
        logits = rows @ weight if b_U is None else torch.addmm(b_U[col0:col1], rows, weight)
        if output_transform is not None:
            logits = output_transform(logits)
        yield col0, out.copy_(logits)


def _target_logits(rows_by_pos, W_U, b_U, targets, output_transform) -> Float[Tensor, "pos layer"]:
    """The target's logit for every ``[pos, layer]`` row (0 where there is no target).

    Computed in float64, then rounded to the unembedding's dtype, as the tiles are.
    """
    safe = targets.clamp_min(0)
    columns = W_U[:, safe].T.double()  # [pos, d_model]
    logits = torch.einsum("pld,pd->pl", rows_by_pos.double(), columns)
    if b_U is not None:
        logits += b_U[safe].double().unsqueeze(-1)
    logits = logits.to(W_U.dtype)
    if output_transform is not None:
        logits = output_transform(logits)
    return torch.where((targets >= 0).unsqueeze(-1), logits.float(), 0.0).contiguous()
