"""The tuned-lens refinement's truncated KL: the written-out gradient against autograd.

:func:`lenslib.tuned.truncated.loss_and_row_gradient` replaces autograd on the vocabulary-wide
part of each refinement step; :func:`lenslib.tuned.truncated.truncated_kl` is the same loss for
autograd. In float64 the two must agree to rounding; the float32 path (oneDNN where it applies)
is held to a bound derived from float32 arithmetic (tests/numerics.py).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import lenslib.core.bridge as bridge
import lenslib.tuned.truncated as truncated
from lenslib.tuned.truncated import draw_columns, final_log_probs, loss_and_row_gradient, truncated_kl
from numerics import U32, gamma, logit_error

D_MODEL, D_VOCAB, LAYERS, BATCH, TOP_K = 24, 700, 3, 8, 5


def stand_in(dtype=torch.float64, bias=True, seed=0, d_vocab=D_VOCAB):
    """A model as the refinement sees it: ``W_U`` a transposed view of a ``[d_vocab, d_model]``
    weight (the bridge's layout), a bias, no output transform."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(d_vocab, D_MODEL, generator=g, dtype=torch.float64).to(dtype)
    b_U = torch.randn(d_vocab, generator=g, dtype=torch.float64).to(dtype) if bias else None
    return SimpleNamespace(W_U=weight.T, b_U=b_U)


def step_inputs(model, sample, seed=1, top_k=TOP_K):
    """Lens rows, the final distribution's summary and one column draw, as ``refine`` makes them."""
    g = torch.Generator().manual_seed(seed)
    dtype = model.W_U.dtype
    rows = torch.randn(LAYERS, BATCH, D_MODEL, generator=g, dtype=torch.float64).to(dtype)
    final_rows = torch.randn(BATCH, D_MODEL, generator=g, dtype=torch.float64).to(dtype)
    final_logits = bridge.unembed(model, final_rows)
    final_lse = torch.logsumexp(final_logits, -1)
    top = final_logits.topk(top_k, dim=-1).indices
    draw = draw_columns(top, final_logits.shape[-1], sample, g)
    log_p, p_rest = final_log_probs(model, final_rows, final_lse, draw)
    return rows, log_p, p_rest, draw


def autograd_reference(model, rows, log_p, p_rest, draw):
    leaf = rows.detach().double().requires_grad_(True)
    model64 = SimpleNamespace(W_U=model.W_U.double(), b_U=None if model.b_U is None else model.b_U.double())
    loss = truncated_kl(model64, leaf, log_p.double(), p_rest.double(), draw)
    (grad,) = torch.autograd.grad(loss, leaf)
    return float(loss.detach()), grad


# float64 on both sides: the same sums in another order, at most D_VOCAB + D_MODEL terms of
# size <= 1e2 each (logits of unit-normal rows and weights, |z| <~ 5 sqrt(D_MODEL)): gamma_1000
# in float64 is 1e-13, times 1e2 is 1e-11; 1e-9 leaves a hundredfold margin.
FLOAT64 = 1e-9


@pytest.mark.parametrize("case", ["sampled rest", "whole rest", "no rest"])
@pytest.mark.parametrize("bias", [True, False])
def test_written_out_gradient_equals_autograd_in_float64(case, bias):
    d_vocab = 30 if case == "no rest" else D_VOCAB
    model = stand_in(bias=bias, d_vocab=d_vocab)
    sample = {"sampled rest": 64, "whole rest": D_VOCAB, "no rest": 64}[case]
    rows, log_p, p_rest, draw = step_inputs(model, sample, top_k=d_vocab if case == "no rest" else TOP_K)
    assert draw.has_rest == (case != "no rest")
    rest = d_vocab - draw.n_kept
    assert draw.log_weight == (pytest.approx(math.log(rest / sample)) if case == "sampled rest" else 0.0)
    loss, grad = loss_and_row_gradient(model, rows, log_p, p_rest, draw)
    want_loss, want_grad = autograd_reference(model, rows, log_p, p_rest, draw)
    assert loss == pytest.approx(want_loss, abs=FLOAT64)
    assert float((grad - want_grad).abs().max()) <= FLOAT64
    assert float(want_grad.abs().max()) > 1e-3  # a gradient that is there to be matched


def test_output_transform_enters_the_gradient(monkeypatch):
    """A soft-capped model (Gemma 2's ``c tanh(z / c)``): the chain rule through the transform."""
    cap = 3.0  # small, so that tanh bends the logits of unit-normal rows
    softcap = lambda z: cap * torch.tanh(z / cap)  # noqa: E731
    monkeypatch.setattr(bridge, "output_transform", lambda model: softcap)
    monkeypatch.setattr(truncated, "output_transform", lambda model: softcap)
    model = stand_in()
    rows, log_p, p_rest, draw = step_inputs(model, 64)
    loss, grad = loss_and_row_gradient(model, rows, log_p, p_rest, draw)
    want_loss, want_grad = autograd_reference(model, rows, log_p, p_rest, draw)
    assert loss == pytest.approx(want_loss, abs=FLOAT64)
    assert float((grad - want_grad).abs().max()) <= FLOAT64
    monkeypatch.undo()
    _, uncapped = loss_and_row_gradient(model, rows, log_p, p_rest, draw)
    assert float((uncapped - grad).abs().max()) > 1e-2  # the cap changed the gradient


def test_float32_path_is_within_its_rounding_bound():
    """float32 (oneDNN where it applies) against the float64 autograd reference.

    Bound, from tests/numerics.py: every float32 logit is within ``delta = R(h)`` (step 1) of
    its exact value, so ``z - log Z`` moves by at most ``2 delta`` and each of ``q``, ``p``'s
    share of the rest and ``exp(zr - lse(zr))`` by a factor ``e^{2 delta} - 1`` of itself, plus
    a few roundings of their own (``exp``, a subtraction, a product: 8u). The gradient's columns
    ``G`` sum to at most ``2 / batch`` in absolute value (``sum q + sum p = 2`` on ``T``; the rest
    adds ``|q_rest - p_rest| <= 1``), each moved by three such factors; the second product adds
    ``gamma_C`` relative over its ``C`` columns. So every entry of the row gradient is within
    ``max|W| (2 / batch) (3 (e^{2 delta} - 1) + 8u + gamma_C)`` of the exact one.
    The loss: the KL bound of step 3, ``(KL + 3)(e^{2 delta} - 1)`` per row, summed over layers,
    plus the rounding of its three sums (``gamma_{|T|}`` of their sizes, at most ``e (|log_p|
    + |z| + |log Z|)`` terms of which none exceeds the row's largest logit plus 10).
    """
    model32 = stand_in(dtype=torch.float32)
    rows, log_p, p_rest, draw = step_inputs(model32, 64)
    loss, grad = loss_and_row_gradient(model32, rows, log_p, p_rest, draw)
    want_loss, want_grad = autograd_reference(model32, rows, log_p, p_rest, draw)
    delta = float(logit_error(rows, model32.W_U, model32.b_U).max())
    spread = math.expm1(2 * delta)
    n_columns = draw.columns.numel()
    grad_bound = float(model32.W_U.abs().max()) * (2 / BATCH) * (3 * spread + 8 * U32 + gamma(n_columns))
    assert float((grad.double() - want_grad).abs().max()) <= grad_bound
    largest = float(bridge.unembed(model32, rows).abs().max()) + 10
    loss_bound = LAYERS * ((want_loss / LAYERS + 3) * spread + gamma(draw.n_kept + 2) * 3 * largest)
    assert abs(loss - want_loss) <= loss_bound


def test_draw_keeps_every_top_token_once_and_samples_only_the_rest():
    g = torch.Generator().manual_seed(0)
    top = torch.tensor([[1, 2, 3], [3, 4, 5]])
    draw = draw_columns(top, 50, 10, g)
    assert draw.columns[:draw.n_kept].tolist() == [1, 2, 3, 4, 5]
    drawn = set(draw.columns[draw.n_kept:].tolist())
    assert len(draw.columns) == 15 and not drawn & {1, 2, 3, 4, 5}
    assert draw.log_weight == pytest.approx(math.log(45 / 10))
    whole = draw_columns(top, 12, 10, g)  # 7 rest tokens <= 10: taken whole, the KL is exact
    assert whole.has_rest and whole.log_weight == 0.0 and sorted(whole.columns.tolist()) == list(range(12))
    kept_all = draw_columns(torch.arange(6).view(2, 3), 6, 10, g)
    assert not kept_all.has_rest and kept_all.n_kept == 6


def test_final_summary_matches_dense_float64(tiny):
    """The refinement's pool summary (tiled, lse from the top token) against dense float64.

    Bound: the float32 logits are within ``delta = R(h)`` of exact (numerics step 1), so
    ``log p_top`` within ``2 delta`` (step 3), plus the kernel's float32 tile sums
    (``sum_error``, step 4); ``z_top`` is summed in float64 (~1e-16) and the result rounded to
    float32 once (``u |lse|``).
    """
    from lenslib.tuned.fit import final_summary
    from lenslib.tuned.residuals import collect_residuals
    from numerics import sum_error

    resid = collect_residuals(tiny, ["the quick brown fox", "jumps over the lazy dog again"], progress=False)
    normed, lse, top = final_summary(tiny, resid.raw[-1], top_k=4)
    logits = normed.double() @ tiny.W_U.detach().double()
    want_lse = torch.logsumexp(logits, -1)
    delta = logit_error(normed, tiny.W_U)
    bound = 2 * delta + sum_error(tiny.cfg.d_vocab) + U32 * want_lse.abs()
    assert bool(((lse.double() - want_lse).abs() <= bound).all())
    want_top = logits.topk(4, dim=-1)
    # top ids agree wherever the neighbouring exact logits are more than 2 delta apart (step 5)
    gaps = (want_top.values[:, :-1] - want_top.values[:, 1:]).abs()
    separated = (gaps > 2 * delta.unsqueeze(-1)).all(-1)
    assert bool(separated.any())
    assert torch.equal(top[separated], want_top.indices[separated])
