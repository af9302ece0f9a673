"""Logit-lens statistics from the normalised residual stream, computed chunk by chunk.

The naive lens materialises ``[layer, pos, d_vocab]`` logits (6.3 GB for 128 tokens of
gemma-3-270m). Here positions are processed in blocks, all layers of a block at once, so extra
memory is bounded by ``chunk_bytes`` (times about 2.5 for temporaries), whatever the prompt
length. Per block:

1. ``logits = resid @ W_U + b_U`` (one ``addmm``; this matmul is the cost floor), then the model's
   own output transform if it has one (e.g. soft-capping);
2. top-k, whose first value is the row maximum used to stabilise the softmax;
3. one ``exp`` pass; the partition function, the entropy's ``E_p[logit]`` and the KL's
   ``E_{p_final}[logit]`` are dot products done as batched matrix products (no temporaries);
4. the target's logit by gather, its rank by one comparison pass.

Identities used (``z`` a layer's logits, ``lse = logsumexp(z)``, ``p = softmax(z)``; nats):

    entropy(layer)           = lse - sum_v p_v z_v
    KL(final || layer)       = sum_v p_final,v (log p_final,v - log p_v)
                             = -entropy(final) - sum_v p_final,v z_v + lse
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor

DEFAULT_CHUNK_BYTES = 128 * 2**20


@dataclass
class LensStats:
    """Per layer x position statistics of the lens. CPU tensors; information in nats."""

    top_ids: Int[Tensor, "layer pos k"]
    top_probs: Float[Tensor, "layer pos k"]
    entropy: Float[Tensor, "layer pos"]
    kl_to_final: Float[Tensor, "layer pos"]
    target_logprob: Float[Tensor, "layer pos"]  # NaN where the target is -1
    target_rank: Int[Tensor, "layer pos"]  # 1 = top; 0 where the target is -1


_DOT_SEGMENT = 1024  # BLAS dot products accumulate naively; segments keep fp32 error ~1e-5 nats


def _rowdot(a: Float[Tensor, "... v"], b: Float[Tensor, "... v"]) -> Float[Tensor, "..."]:
    """sum_v a[..., v] * b[..., v] without a [..., v] temporary.

    Done as batched matrix products over 1024-long segments whose partial sums are added, so the
    rounding error stays near that of pairwise summation (a single BLAS dot over 262144 fp32
    terms is off by ~3e-3 relative).
    """
    head = a.shape[-1] - a.shape[-1] % _DOT_SEGMENT
    total = a.new_zeros(a.shape[:-1])
    if head:
        a_seg = a[..., :head].unflatten(-1, (-1, _DOT_SEGMENT)).unsqueeze(-2)
        b_seg = b[..., :head].unflatten(-1, (-1, _DOT_SEGMENT)).unsqueeze(-1)
        total += (a_seg @ b_seg).squeeze(-1).squeeze(-1).sum(-1)
    if head < a.shape[-1]:
        total += (a[..., head:] * b[..., head:]).sum(-1)
    return total


def positions_per_block(n_layer: int, d_vocab: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Positions decoded together: as many as keep ``[layer, block, d_vocab]`` fp32 logits
    within ``chunk_bytes``, and at least one."""
    return max(1, chunk_bytes // (4 * d_vocab * n_layer))


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
    """Decode every layer x position and reduce to statistics, never holding all logits.

    Args:
        normalised_resid: the residual stream after the final norm (``ln_final``), one row per
            layer; the last layer must be the model's final residual stream, since KL is taken
            to it.
        W_U, b_U: the unembedding (``b_U`` may be None).
        target_ids: one token id per position, or -1 for none.
        k: how many top tokens to keep (1 <= k <= d_vocab).
        output_transform: applied to the logits before the softmax (the model's own, if any).
        chunk_bytes: budget for one block of fp32 logits; peak extra memory is about 2.5x this.

    Returns:
        :class:`LensStats` with ``[layer, pos]`` tensors on the CPU, computed in float32.
    """
    n_layer, n_pos, d_model = normalised_resid.shape
    d_vocab = W_U.shape[1]
    block = positions_per_block(n_layer, d_vocab, chunk_bytes)
    out = {
        "top_ids": torch.empty(n_layer, n_pos, k, dtype=torch.long),
        "top_probs": torch.empty(n_layer, n_pos, k),
        "entropy": torch.empty(n_layer, n_pos),
        "kl_to_final": torch.empty(n_layer, n_pos),
        "target_logprob": torch.empty(n_layer, n_pos),
        "target_rank": torch.empty(n_layer, n_pos, dtype=torch.long),
    }
    target_ids = target_ids.to(W_U.device)
    # Two logits-sized buffers, reused by every block (fresh allocations page-fault each time).
    shape = (n_layer * min(block, n_pos), d_vocab)
    buffers = [torch.empty(shape, device=W_U.device) for _ in range(2)]
    for start in range(0, n_pos, block):
        stop = min(start + block, n_pos)
        stats = _block_stats(
            normalised_resid[:, start:stop], W_U, b_U, target_ids[start:stop], k,
            output_transform, buffers,
        )
        for name, value in stats.items():
            out[name][:, start:stop] = value.cpu()
    return LensStats(**out)


@torch.no_grad()
def _block_stats(resid, W_U, b_U, targets, k, output_transform, buffers) -> dict[str, Tensor]:
    n_layer, n_pos, d_model = resid.shape
    n_rows = n_layer * n_pos
    logits_buf, work_buf = (b[:n_rows] for b in buffers)
    rows = resid.reshape(n_rows, d_model).to(W_U.dtype)
    if W_U.dtype == torch.float32 and output_transform is None:
        if b_U is None:
            torch.mm(rows, W_U, out=logits_buf)
        else:
            torch.addmm(b_U, rows, W_U, out=logits_buf)
        logits = logits_buf
    else:
        logits = rows @ W_U if b_U is None else torch.addmm(b_U, rows, W_U)
        if output_transform is not None:
            logits = output_transform(logits)
        logits = logits_buf.copy_(logits)
    logits = logits.view(n_layer, n_pos, -1)  # [layer, pos, vocab], float32

    top_logits, top_ids = logits.topk(k, dim=-1, sorted=True)
    row_max = top_logits[..., :1]
    weights = torch.sub(logits, row_max, out=work_buf.view_as(logits)).exp_()  # unnormalised p
    partition = weights.sum(-1)
    lse = row_max.squeeze(-1) + partition.log()
    entropy = (lse - _rowdot(weights, logits) / partition).clamp_min_(0.0)

    final_probs = weights[-1] / partition[-1].unsqueeze(-1)  # [pos, vocab]
    cross = torch.stack([_rowdot(logits[layer], final_probs) for layer in range(n_layer)])
    kl = (lse - cross - entropy[-1]).clamp_min_(0.0)  # [layer, pos]
    kl[-1] = 0.0  # exactly zero by definition; rounding would leave ~1e-6

    has_target = targets >= 0
    safe = targets.clamp_min(0).view(1, n_pos, 1).expand(n_layer, n_pos, 1)
    target_logit = logits.gather(-1, safe)  # [layer, pos, 1]
    above = torch.gt(logits, target_logit, out=work_buf.view_as(logits))  # 1.0 where above
    rank = above.sum(-1).long() + 1  # exact: float32 counts are exact below 2**24
    target_logprob = target_logit.squeeze(-1) - lse
    return {
        "top_ids": top_ids,
        "top_probs": (top_logits - lse.unsqueeze(-1)).exp(),
        "entropy": entropy,
        "kl_to_final": kl,
        "target_logprob": torch.where(has_target, target_logprob, torch.nan),
        "target_rank": torch.where(has_target, rank, 0),
    }
