"""The lens's tile matmul: oneDNN where it applies, torch.mm elsewhere, the same products."""

from types import SimpleNamespace

import pytest
import torch

import lenslib
from lenslib.core import onednn as tm
from lenslib.core.stats import TILE_COLUMNS, lens_stats, tile_shape
from numerics import (
    U32, assert_ranks_within, assert_top_ids_agree, assert_within, exact_logits, fraction,
    lens_tolerances, logit_shift, matmul_error,
)

needs_onednn = pytest.mark.skipif(
    tm.onednn_unavailable_reason(torch.empty(1, 8), torch.empty(16, 8).T) is not None,
    reason="oneDNN does not apply on this torch build",
)


def _lm_head_layout(d_vocab, d_model, generator):
    """``W_U`` as a bridge holds it: the transpose of a contiguous ``[d_vocab, d_model]`` weight."""
    return torch.randn(d_vocab, d_model, generator=generator).T


@needs_onednn
@pytest.mark.parametrize("with_bias", [False, True])
def test_onednn_tiles_match_float64(with_bias, monkeypatch):
    monkeypatch.setenv("LENSLIB_MATMUL", "onednn")  # about oneDNN, also under make test-kernels
    g = torch.Generator().manual_seed(1)
    rows = torch.randn(45, 96, generator=g)
    W_U = _lm_head_layout(300, 96, g)
    b_U = torch.randn(300, generator=g) if with_bias else None
    assert tm.matmul_backend(rows, W_U) == "onednn"
    buffer = torch.full((45 * 128,), torch.nan)
    for col0 in range(0, 300, 128):  # the last tile is 44 columns
        col1 = min(col0 + 128, 300)
        out = buffer[: 45 * (col1 - col0)].view(45, col1 - col0)
        tile = tm.tile_matmul(rows, W_U, b_U, col0, col1, out)
        want = rows.double() @ W_U[:, col0:col1].double()
        if b_U is not None:
            want += b_U[col0:col1].double()
        assert tile.shape == (45, col1 - col0) and tile.dtype == torch.float32
        bias = None if b_U is None else b_U[col0:col1]
        # numerics step 1: gamma_{d+1} (|rows| @ |W_U| + |b_U|), for any summation order
        assert_within(tile, want, matmul_error(rows, W_U[:, col0:col1], bias), "oneDNN tile")


def test_a_strided_weight_goes_to_torch_mm_into_the_buffer():
    """oneDNN was many times slower than MKL on a strided weight: a contiguous
    ``[d_model, d_vocab]`` W_U (W_U.T strided) must not reach it; torch.mm fills ``out``."""
    rows, W_U = torch.randn(2, 8), torch.randn(8, 16)
    assert "not contiguous" in tm.onednn_unavailable_reason(rows, W_U)
    assert tm.matmul_backend(rows, W_U) == "torch.mm"
    out = torch.empty(2, 4)
    tile = tm.tile_matmul(rows, W_U, torch.ones(16), 4, 8, out)
    assert tile.data_ptr() == out.data_ptr()
    # two float32 computations of one product (addmm; mm then + 1): each within step 1's bound,
    # the separate + 1 one more rounding
    want = rows @ W_U[:, 4:8] + 1
    bound = 2 * matmul_error(rows, W_U[:, 4:8], torch.ones(4)) + U32 * want.double().abs()
    assert_within(tile, want, bound, "torch.mm tile")


def test_other_dtypes_and_settings_go_to_torch_mm(monkeypatch):
    W_U = torch.randn(16, 8).T
    assert "float32" in tm.onednn_unavailable_reason(torch.randn(2, 8).double(), W_U.double())
    monkeypatch.setenv("LENSLIB_MATMUL", "torch")
    assert tm.matmul_backend(torch.randn(2, 8), W_U) == "torch.mm"
    monkeypatch.setenv("LENSLIB_MATMUL", "fast")
    with pytest.raises(ValueError, match="LENSLIB_MATMUL must be auto, onednn or torch"):
        tm.matmul_backend(torch.randn(2, 8), W_U)


@needs_onednn
def test_reduced_precision_setting_is_not_used_silently():
    settings = torch.backends.mkldnn.matmul
    before = settings.fp32_precision
    try:
        settings.fp32_precision = "bf16"
        reason = tm.onednn_unavailable_reason(torch.randn(2, 8), torch.randn(16, 8).T)
    finally:
        settings.fp32_precision = before
    assert reason is not None and "reduced precision" in reason


def test_onednn_demanded_where_it_cannot_run_says_why(monkeypatch):
    monkeypatch.setenv("LENSLIB_MATMUL", "onednn")
    with pytest.raises(RuntimeError, match="W_U.T is not contiguous"):
        tm.matmul_backend(torch.randn(2, 8), torch.randn(8, 16))


@needs_onednn
def test_lens_statistics_agree_between_the_two_libraries(monkeypatch):
    """The same statistics from oneDNN and MKL tiles on a real model (SmolLM2's vocabulary),
    within float32 rounding; top-1 equal wherever the top two are not within rounding."""
    model = lenslib.load_model("smollm2-135m")
    tokens = model.to_tokens("The capital of France is Paris, and the capital of Italy is")
    _, cache = model.run_with_cache(tokens)
    resid = cache.accumulated_resid(apply_ln=True)[:, 0]  # [layer, pos, d_model]
    targets = torch.cat([tokens[0, 1:], torch.tensor([-1])])
    runs = {}
    for backend in ("onednn", "torch"):
        monkeypatch.setenv("LENSLIB_MATMUL", backend)
        runs[backend] = lens_stats(resid, model.W_U, None, targets, k=2)
    a, b = runs["onednn"], runs["torch"]
    # numerics steps 1-5: the same rows, so the logits differ by the two libraries' rounding only
    delta = logit_shift(resid, None, model.W_U)
    tol = lens_tolerances(delta, a, b, columns=min(TILE_COLUMNS, model.W_U.shape[1]))
    assert_within(a.entropy, b.entropy, tol["entropy"], "entropy")
    assert_within(a.kl_to_final, b.kl_to_final, tol["kl_to_final"], "kl_to_final")
    assert_within(a.target_logprob, b.target_logprob, tol["logprob"], "target_logprob", equal_nan=True)
    separated = assert_top_ids_agree(a.top_ids, b.top_ids, b.top_probs, delta)
    assert fraction(separated[..., 0]) > 0.5  # most top-1s are checked, not waived as near-ties
    assert_ranks_within(a.target_rank, b.target_rank, resid, model.W_U, None, targets, delta)


class _OwnLinear(torch.nn.Linear):
    pass


GELU_SLOPE = 1.1289  # max of the exact GELU's derivative, x Phi(x) + phi(x) (at x = sqrt(2))
GELU_ULPS = 4  # erf (<= 2 ulps), a product, a sum and a halving


@torch.no_grad()
def _float32_error(net, x):
    """First-order elementwise bound on a float32 run of ``net`` (Linear / GELU layers) against
    the exact one: each Linear adds numerics step 1's ``gamma_{n+1} (|x| |W| + |b|)`` and carries
    the error it is given through ``|W|``; GELU multiplies it by at most its largest slope and adds
    its own rounding. Second-order terms are O(gamma^2), below 1e-9 of the bound."""
    value, error = x.double(), torch.zeros_like(x, dtype=torch.float64)
    for layer in net:
        if isinstance(layer, torch.nn.Linear):
            W, b = layer.weight.double().T, None if layer.bias is None else layer.bias.double()
            error = error @ W.abs() + matmul_error(value, W, b)
            value = torch.nn.functional.linear(value, layer.weight.double(), b)
        else:
            value = layer(value)
            error = GELU_SLOPE * error + GELU_ULPS * U32 * value.abs()
    return error


@needs_onednn
def test_linear_layers_switch_to_onednn_with_the_same_outputs(monkeypatch):
    monkeypatch.setenv("LENSLIB_MATMUL", "onednn")  # about oneDNN, also under make test-kernels
    g = torch.Generator().manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.GELU(), torch.nn.Linear(40, 8, bias=False), _OwnLinear(8, 3))
    x = torch.randn(2, 11, 24, generator=g)  # [batch, pos, d]: oneDNN takes the leading dims as rows
    with torch.no_grad():
        want = net.double()(x.double())
        net.float()
        assert tm.use_for_linear_layers(net) == 2
        got = net(x)
    assert [type(m).__name__ for m in net] == ["OneDNNLinear", "GELU", "OneDNNLinear", "_OwnLinear"]
    bound = _float32_error(net, x)
    assert_within(got, want, bound, "float32 net against float64")
    with torch.no_grad():  # a strided input: nn.Linear's own path, the same numbers
        strided = x.transpose(0, 1).contiguous().transpose(0, 1)
        assert not strided.is_contiguous()
        assert_within(net(strided), got, 2 * bound, "MKL against oneDNN")  # each within `bound`
    x.requires_grad_(True)  # a gradient: nn.Linear's own path, which has one
    net(x).sum().backward()
    assert x.grad is not None and net[0].weight.grad is not None
    with torch.no_grad():  # other dtypes take nn.Linear's own path
        assert net.double()(x.double()).dtype == torch.float64


def test_linear_layers_stay_with_torch_when_asked(monkeypatch):
    monkeypatch.setenv("LENSLIB_MATMUL", "torch")
    net = torch.nn.Sequential(torch.nn.Linear(4, 4))
    assert tm.use_for_linear_layers(net) == 0 and type(net[0]) is torch.nn.Linear


@needs_onednn
def test_the_sdpa_shadow_runs_its_linear_layers_on_onednn(monkeypatch):
    from lenslib.core.forward import sdpa_shadow
    from lenslib.models.random_weights import tiny_model

    monkeypatch.setenv("LENSLIB_MATMUL", "onednn")  # about oneDNN, also under make test-kernels
    model = tiny_model()
    shadow = sdpa_shadow(model)[0]
    assert type(shadow.model.layers[0].self_attn.q_proj) is tm.OneDNNLinear
    monkeypatch.setenv("LENSLIB_MATMUL", "torch")  # a changed setting rebuilds the shadow
    plain = sdpa_shadow(model)[0]
    assert plain is not shadow and type(plain.model.layers[0].self_attn.q_proj) is torch.nn.Linear


@needs_onednn
def test_bias_and_output_transform_give_the_same_statistics_on_both_libraries(monkeypatch):
    g = torch.Generator().manual_seed(3)
    resid = torch.randn(4, 9, 32, generator=g)  # [layer, pos, d_model]
    W_U = _lm_head_layout(700, 32, g)
    b_U = torch.randn(700, generator=g)
    targets = torch.randint(0, 700, (9,), generator=g)
    # Gemma 2's final soft-cap; logits here are ~N(0, 33), so it bends them without squashing the
    # top ones together (a cap of 3 made them float32 ties, whose order no library fixes)
    cap = lambda z: 30.0 * torch.tanh(z / 30.0)
    runs = {}
    for backend in ("onednn", "torch"):
        monkeypatch.setenv("LENSLIB_MATMUL", backend)
        runs[backend] = lens_stats(resid, W_U, b_U, targets, k=3, output_transform=cap, chunk_bytes=4 * 4 * 256)
    a, b = runs["onednn"], runs["torch"]
    columns = tile_shape(4, 700, 4 * 4 * 256)[1]
    delta = logit_shift(resid, None, W_U, b_U, softcap=30.0)  # numerics steps 1-5, same rows
    tol = lens_tolerances(delta, a, b, columns=columns)
    for name in ("entropy", "kl_to_final"):
        assert_within(getattr(a, name), getattr(b, name), tol[name], name)
    assert_within(a.target_logprob, b.target_logprob, tol["logprob"], "target_logprob")
    separated = assert_top_ids_agree(a.top_ids, b.top_ids, b.top_probs, delta)
    assert separated.all()  # random logits: no near-ties within delta among the top 3
    assert_ranks_within(a.target_rank, b.target_rank, resid, W_U, b_U, targets, delta, cap)
    logits = exact_logits(resid, W_U, b_U, cap)  # and both against float64
    logp = logits.log_softmax(-1)
    want = -(logp.exp() * logp).sum(-1)
    exact = SimpleNamespace(entropy=want, kl_to_final=(logp[-1].exp() * (logp[-1] - logp)).sum(-1))
    to_exact = lens_tolerances(logit_shift(resid, None, W_U, b_U, rounded=1, softcap=30.0), a, exact,
                               columns=columns, tiled=1)
    assert_within(a.entropy, want, to_exact["entropy"], "entropy against float64")
    assert_within(a.kl_to_final, exact.kl_to_final, to_exact["kl_to_final"], "KL against float64")
