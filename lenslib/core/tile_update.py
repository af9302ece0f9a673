"""Running logit-lens statistics, updated one vocabulary tile at a time.

The lens decodes ``[pos, layer]`` rows of the residual stream against the vocabulary in tiles of
columns, so that a tile of logits fits in the CPU cache and no row's full ``d_vocab`` logits are
ever held. Each statistic is a running reduction in the style of an online softmax: sums of
``w_v = exp(z_v - max)`` are kept relative to the running max and rescaled when it grows.

For one row with logits ``z`` (nats), after all tiles, with ``S = sum_v w_v``:

    lse        = max + log S
    entropy    = log S - sum_v w_v (z_v - max) / S
    KL(final || row) = log S - sum_v w^f_v (z_v - max) / S^f - entropy^f

where ``w^f``, ``S^f`` and ``entropy^f`` belong to the final layer's row at the same position.
Sums relative to the max avoid the cancellation of ``lse - E[z]`` when logits are large.

:func:`torch_tile_update` is the reference, in plain torch, for any device;
``kernels/lens_tile.c`` does the same update fused, in one pass over each row where the running
max holds (see :mod:`lenslib.core.native_kernel`), and the tests hold the two to agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Float64, Int
from torch import Tensor


@dataclass
class RunningStats:
    """Statistics of ``[pos, layer]`` rows over the vocabulary columns seen so far.

    The last layer is the final residual stream (the KL reference). Sums are float64.
    """

    top_val: Float[Tensor, "pos layer k"]  # logits, sorted descending; -inf until filled
    top_id: Int[Tensor, "pos layer k"]
    row_max: Float[Tensor, "pos layer"]  # -inf before the first tile
    sum_w: Float64[Tensor, "pos layer"]  # sum_v exp(z_v - row_max)
    sum_wz: Float64[Tensor, "pos layer"]  # sum_v exp(z_v - row_max) (z_v - row_max)
    sum_fz: Float64[Tensor, "pos layer"]  # sum_v exp(zf_v - row_max_f) (z_v - row_max)
    above: Int[Tensor, "pos layer"]  # columns other than the target with a larger logit
    target_val: Float[Tensor, "pos layer"]  # the target's logit, read from its tile; NaN before

    @classmethod
    def empty(cls, n_pos: int, n_layer: int, k: int, device=None) -> "RunningStats":
        def zeros(dtype):
            return torch.zeros(n_pos, n_layer, dtype=dtype, device=device)

        return cls(
            top_val=torch.full((n_pos, n_layer, k), -torch.inf, device=device),
            top_id=torch.full((n_pos, n_layer, k), -1, dtype=torch.long, device=device),
            row_max=torch.full((n_pos, n_layer), -torch.inf, device=device),
            sum_w=zeros(torch.float64),
            sum_wz=zeros(torch.float64),
            sum_fz=zeros(torch.float64),
            above=zeros(torch.long),
            target_val=torch.full((n_pos, n_layer), torch.nan, device=device),
        )

    def finish(self, target_id: Int[Tensor, "pos"]) -> dict[str, Tensor]:
        """The statistics, ``[pos, layer]`` (``[pos, layer, k]`` for top-k), float32, nats."""
        log_s = self.sum_w.log()
        lse = self.row_max.double() + log_s
        entropy = (log_s - self.sum_wz / self.sum_w).clamp_min(0.0)
        kl = log_s - self.sum_fz / self.sum_w[:, -1:] - entropy[:, -1:]
        kl = kl.clamp_min(0.0)
        kl[:, -1] = 0.0  # exactly zero by definition; rounding would leave ~1e-7
        has_target = (target_id >= 0).unsqueeze(-1)
        target_logprob = torch.where(has_target, self.target_val.double() - lse, torch.nan)
        return {
            "top_ids": self.top_id,
            "top_probs": (self.top_val.double() - lse.unsqueeze(-1)).exp().float(),
            "entropy": entropy.float(),
            "kl_to_final": kl.float(),
            "target_logprob": target_logprob.float(),
            "target_prob": target_logprob.exp().float(),  # rounded as top_probs is: equal at top-1
            "target_rank": torch.where(has_target, self.above + 1, 0),
        }


@torch.no_grad()
def torch_tile_update(
    z: Float[Tensor, "pos layer cols"],
    col0: int,
    target_id: Int[Tensor, "pos"],
    target_logit: Float[Tensor, "pos layer"],
    state: RunningStats,
) -> None:
    """Fold one tile of logits (vocabulary columns ``col0 .. col0 + cols - 1``) into ``state``.

    ``target_logit`` is the target's logit computed before the tiles; ``above`` counts the other
    columns whose logit exceeds it (the target never counts itself). The target's own tile
    records its logit in ``target_val``, so that its probability is computed from the same
    number as the top-k's.
    """
    n_pos, n_layer, cols = z.shape
    merge_topk(z, col0, state)

    new_max = torch.maximum(state.row_max, z.amax(-1))
    first = state.row_max == -torch.inf
    shift = torch.where(first, 0.0, state.row_max.double() - new_max.double())
    scale = torch.where(first, 0.0, shift.exp())
    x = z - new_max.unsqueeze(-1)  # <= 0
    w = x.exp()
    wf = w[:, -1:, :]  # the final layer's weights, relative to its new max
    tile_w = w.sum(-1).double()
    tile_wz = torch.where(w > 0, w * x, 0.0).sum(-1).double()
    tile_fz = torch.where(wf > 0, wf * x, 0.0).sum(-1).double()

    has_target = target_id >= 0
    above = (z > target_logit.unsqueeze(-1)).sum(-1)
    own = (target_id - col0).view(n_pos, 1, 1).expand(n_pos, n_layer, 1)
    own_in_tile = ((own >= 0) & (own < cols)).squeeze(-1)
    own_logit = z.gather(-1, own.clamp(0, cols - 1)).squeeze(-1)
    above -= (own_in_tile & (own_logit > target_logit)).long()
    state.above += torch.where(has_target.unsqueeze(-1), above, 0)
    state.target_val.copy_(torch.where(own_in_tile, own_logit, state.target_val))

    old_sum_wf = state.sum_w[:, -1:]
    state.sum_wz.copy_(scale * (state.sum_wz + shift * state.sum_w) + tile_wz)
    state.sum_fz.copy_(scale[:, -1:] * (state.sum_fz + shift * old_sum_wf) + tile_fz)
    state.sum_w.copy_(scale * state.sum_w + tile_w)
    state.row_max.copy_(new_max)


def merge_topk(z: Float[Tensor, "pos layer cols"], col0: int, state: RunningStats) -> None:
    """Merge the tile's top-k into the running top-k (``torch.topk`` of the two, concatenated)."""
    k = state.top_val.shape[-1]
    if not k:
        return
    vals, ids = z.topk(min(k, z.shape[-1]), dim=-1)
    merged, order = torch.cat([state.top_val, vals], -1).topk(k, dim=-1)
    state.top_id.copy_(torch.cat([state.top_id, ids + col0], -1).gather(-1, order))
    state.top_val.copy_(merged)
