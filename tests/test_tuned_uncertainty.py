"""Held-out scores with uncertainty (bootstrap over texts) and the bias-only baseline."""

from __future__ import annotations

import pytest
import torch

from numerics import U64, gamma

import lenslib
from lenslib.tuned.fit import bias_only_lens
from lenslib.tuned.residuals import collect_residuals

TEXTS = ["hello there, world", "the quick brown fox", "a quiet engine learned to whistle",
         "seven umbrellas before dawn", "abc def ghi jkl", "lazy dogs sleep late"]


def random_lens(tiny, scale, seed):
    generator = torch.Generator().manual_seed(seed)
    lens = lenslib.TunedLens.identity(tiny)
    lens.A = scale * torch.randn(lens.A.shape, generator=generator)
    return lens


def test_bootstrap_interval_is_around_the_mean_and_resamples_whole_texts(tiny):
    scores = lenslib.evaluate_lens(tiny, {"logit": None, "noisy": random_lens(tiny, 0.3, 1)}, TEXTS, progress=False)
    ci = scores.bootstrap_kl("noisy", n_resamples=500)
    table = scores.table[(scores.table.lens == "noisy") & (scores.table.label != "final_post")]
    # both are float64 sums of the same n float32 KLs (>= 0) in other orders, then one division:
    # each within (gamma_{n-1} + u) of the exact mean in float64 (Higham eq. 3.5), so 2 gamma_{n+1}
    # of each other, relative
    mean = torch.tensor(table.kl_nats.values)
    rtol = 2 * gamma(scores.n_tokens + 1, U64)
    torch.testing.assert_close(torch.tensor(ci.kl_nats.values), mean, rtol=rtol, atol=0)
    assert (ci.low <= ci.kl_nats).all() and (ci.kl_nats <= ci.high).all() and (ci.high > ci.low).all()
    # by hand: the per-token scores sum to the table's means
    per_token = scores.token_kl[scores.lens_names.index("noisy"), :-1].double().mean(-1)
    torch.testing.assert_close(per_token, mean, rtol=rtol, atol=0)  # the same bound


def test_one_text_leaves_nothing_to_resample(tiny):
    scores = lenslib.evaluate_lens(tiny, None, TEXTS[:1], progress=False)
    ci = scores.bootstrap_kl("logit")
    # exact: every resample is the one text, so every resampled mean is the same float64 and the
    # quantiles interpolate between equal values
    assert (ci.low == ci.high).all()


def test_paired_difference(tiny):
    lenses = {"logit": None, "a": random_lens(tiny, 0.3, 1), "same": lenslib.TunedLens.identity(tiny)}
    scores = lenslib.evaluate_lens(tiny, lenses, TEXTS, progress=False)
    zero = scores.bootstrap_kl("same", versus="logit")
    assert (zero.kl_nats == 0).all() and (zero.low == 0).all() and (zero.high == 0).all()
    gap = scores.bootstrap_kl("a", versus="logit")
    a, logit = scores.bootstrap_kl("a").kl_nats, scores.bootstrap_kl("logit").kl_nats
    direct = a - logit
    # float64: the paired mean sums n differences (one rounding each) in one order, the direct one
    # two sums of n KLs (>= 0) and a subtraction: each within gamma_{n+2} (a + logit) of the exact
    bound = 2 * gamma(scores.n_tokens + 2, U64) * (a + logit)
    assert ((gap.kl_nats - direct).abs() <= bound).all()
    with pytest.raises(lenslib.InputError, match="no lens 'b'"):
        scores.bootstrap_kl("b")


def test_bias_only_lens_is_the_least_squares_offset(tiny):
    resid = collect_residuals(tiny, TEXTS, progress=False)
    lens = bias_only_lens(tiny, resid)
    assert bool((lens.A == 0).all())
    for i in range(len(lens.labels)):
        # the optimum of ||h + b - y||^2 over b: any other offset does worse on the same tokens.
        # Exactly, loss(b + e) - loss(b) = n ||e||^2 + 2 e . sum(h + b - y), and the second term is
        # the float32 optimum's rounding only (|b - b*| <= gamma_n mean|y - h| per entry). The loss
        # is summed in float64: in float32 its rounding (gamma_{n d} loss, ~1e3 here) would swamp
        # n ||e||^2 (0.42 expected for e ~ 0.01 N(0, I_32), n = 132 tokens; at least 0.22 in 20
        # draws here, while |sum(h + b - y)| <= 1.2e-4 per entry makes the other term ~1e-5)
        def loss(b):
            return float(((resid.raw[i].double() + b.double() - resid.raw[-1].double()) ** 2).sum())
        assert loss(lens.b[i]) < loss(lens.b[i] + 0.01 * torch.randn(lens.b.shape[1]))
        assert loss(lens.b[i]) < loss(torch.zeros_like(lens.b[i]))


def test_residuals_know_their_texts(tiny):
    resid = collect_residuals(tiny, ["abc", "hello"], progress=False)
    assert resid.text_ids.tolist() == [0] * 3 + [1] * 5
