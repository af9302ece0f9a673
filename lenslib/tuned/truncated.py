"""The KL refinement's loss: KL(final || lens) over a truncated vocabulary, and its gradient.

A refinement step scores ``layers x batch`` translated rows against the final distribution.
The softmax over the whole vocabulary is what costs, so the KL is taken over a truncated one
(:mod:`lenslib.tuned.fit` step 3): ``T`` = the union of the batch's final top tokens, plus a
uniform sample standing for the rest, which is one bucket. With ``z`` the lens logits on
``T``'s columns, ``zr`` those on the sampled columns plus ``log_w`` (``log((d_vocab - |T|) /
sample)``), ``log Z = logaddexp(lse(z), lse(zr))`` and ``q = exp(z - log Z)``:

    KL = sum_T p (log p - log q) + p_rest (log p_rest - (lse(zr) - log Z))

and its gradient, which :func:`loss_and_row_gradient` writes out instead of asking autograd
for it (autograd keeps every intermediate ``[layer, batch, column]`` array and zero-fills its
slices' gradients):

    dKL/dz  = q - p
    dKL/dzr = exp(zr - log Z) - p_rest * exp(zr - lse(zr))

The two vocabulary-wide matmuls (the logits, and the gradient back to the rows) run on oneDNN
where it applies (:mod:`lenslib.core.onednn`), on the sampled columns gathered as contiguous
rows of ``W_U.T``. :func:`truncated_kl` is the same loss written for autograd: the reference
the tests hold the gradient to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lenslib.core.bridge import output_transform, unembed
from lenslib.core.onednn import linear


@dataclass(frozen=True)
class ColumnDraw:
    """The vocabulary columns of one refinement step.

    Attributes:
        columns: ``[n_kept + n_drawn]`` token ids: the kept tokens ``T`` first, then the draw.
        n_kept: ``|T|``.
        log_weight: ``log`` of how many rest tokens each drawn one stands for (0 when the rest is
            taken whole and the KL is exact).
    """

    columns: Int[Tensor, "column"]
    n_kept: int
    log_weight: float

    @property
    def has_rest(self) -> bool:
        """Whether any column lies outside ``T`` (when ``T`` is the whole vocabulary, the loss is
        an ordinary KL with no rest bucket)."""
        return self.columns.numel() > self.n_kept


def draw_columns(top: Int[Tensor, "batch top_k"], d_vocab: int, sample: int, generator: torch.Generator) -> ColumnDraw:
    """``T`` = the union of ``top``, then ``sample`` uniform draws (with replacement) from the
    rest, or the whole rest when it holds no more than ``sample`` tokens."""
    kept = torch.unique(top.reshape(-1))
    in_kept = torch.zeros(d_vocab, dtype=torch.bool)
    in_kept[kept] = True
    rest = (~in_kept).nonzero()[:, 0]
    if rest.numel() > sample:
        drawn = rest[torch.randint(0, rest.numel(), (sample,), generator=generator)]
        log_weight = math.log(rest.numel() / sample)
    else:
        drawn, log_weight = rest, 0.0
    return ColumnDraw(torch.cat([kept, drawn]), kept.numel(), log_weight)


def final_log_probs(model, final_rows: Float[Tensor, "batch d_model"], final_lse: Float[Tensor, "batch"],
                    draw: ColumnDraw) -> tuple[Float[Tensor, "batch kept"], Float[Tensor, "batch"]]:
    """The final distribution on ``T``: ``(log p [batch, |T|], p_rest [batch])``, exact (the
    log-normaliser ``final_lse`` is the full vocabulary's)."""
    log_p = unembed(model, final_rows, draw.columns[:draw.n_kept]) - final_lse.unsqueeze(-1)
    p_rest = (1 - log_p.exp().sum(-1)).clamp_min(1e-12)
    return log_p, p_rest


def truncated_kl(model, lens_rows: Float[Tensor, "layer batch d_model"], log_p: Tensor, p_rest: Tensor,
                 draw: ColumnDraw) -> Float[Tensor, ""]:
    """The loss for autograd: mean over the batch, sum over layers (nats)."""
    z = unembed(model, lens_rows, draw.columns)  # [layer, batch, column]
    p = log_p.exp()
    z_kept = z[..., :draw.n_kept]
    if not draw.has_rest:
        return (p * (log_p - z_kept.log_softmax(-1))).sum(-1).mean(-1).sum()
    log_rest = torch.logsumexp(z[..., draw.n_kept:] + draw.log_weight, dim=-1)
    log_z = torch.logaddexp(torch.logsumexp(z_kept, dim=-1), log_rest)
    log_q = z_kept - log_z.unsqueeze(-1)
    kl = (p * (log_p - log_q)).sum(-1) + p_rest * (p_rest.log() - (log_rest - log_z))
    return kl.mean(-1).sum()


@torch.no_grad()
def loss_and_row_gradient(
    model, lens_rows: Float[Tensor, "layer batch d_model"], log_p: Float[Tensor, "batch kept"],
    p_rest: Float[Tensor, "batch"], draw: ColumnDraw,
) -> tuple[float, Float[Tensor, "layer batch d_model"]]:
    """:func:`truncated_kl`'s value (nats) and its gradient with respect to ``lens_rows``."""
    n_layers, batch, d_model = lens_rows.shape
    weight = model.W_U.T[draw.columns]  # [column, d_model]: rows of the [d_vocab, d_model] layout
    b_U = getattr(model, "b_U", None)
    bias = None if b_U is None else b_U.detach()[draw.columns]
    raw = linear(lens_rows.reshape(-1, d_model), weight.detach(), bias).view(n_layers, batch, -1)
    transform = output_transform(model)
    z = raw if transform is None else transform(raw)
    n_kept = draw.n_kept
    z_kept, z_rest = z[..., :n_kept], z[..., n_kept:]
    p = log_p.exp()
    log_kept = torch.logsumexp(z_kept, dim=-1)
    log_rest = None if not draw.has_rest else torch.logsumexp(z_rest, dim=-1) + draw.log_weight
    log_z = log_kept if log_rest is None else torch.logaddexp(log_kept, log_rest)
    # sum_T p (log p - log q), log q = z - log Z, without a [layer, batch, |T|] temporary
    kl = (p * log_p).sum(-1) - (z_kept * p).sum(-1) + log_z * p.sum(-1)
    grad = torch.empty_like(z)
    torch.sub(z_kept, log_z.unsqueeze(-1), out=grad[..., :n_kept]).exp_().sub_(p)  # q - p
    if log_rest is not None:
        log_q_rest = log_rest - log_z
        kl = kl + p_rest * (p_rest.log() - log_q_rest)
        # exp(zr - log Z) - p_rest exp(zr - lse(zr)) = exp(zr - lse(zr)) (q_rest - p_rest)
        rest_share = torch.sub(z_rest, (log_rest - draw.log_weight).unsqueeze(-1), out=grad[..., n_kept:]).exp_()
        rest_share.mul_((log_q_rest.exp() - p_rest).unsqueeze(-1))
    grad.div_(batch)  # the loss is a mean over the batch
    if transform is not None:
        with torch.enable_grad():
            raw_leaf = raw.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(transform(raw_leaf), raw_leaf, grad)
    row_grad = linear(grad.reshape(-1, grad.shape[-1]), weight.detach().T.contiguous(), None)
    return float(kl.mean(-1).sum()), row_grad.view(n_layers, batch, d_model)
