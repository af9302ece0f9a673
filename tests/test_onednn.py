"""The lens's tile matmul: oneDNN where it applies, torch.mm elsewhere, the same products."""

import pytest
import torch

import lenslib
from lenslib.core import onednn as tm
from lenslib.core.stats import lens_stats

needs_onednn = pytest.mark.skipif(
    tm.onednn_unavailable_reason(torch.empty(1, 8), torch.empty(16, 8).T) is not None,
    reason="oneDNN does not apply on this torch build",
)


def _lm_head_layout(d_vocab, d_model, generator):
    """``W_U`` as a bridge holds it: the transpose of a contiguous ``[d_vocab, d_model]`` weight."""
    return torch.randn(d_vocab, d_model, generator=generator).T


@needs_onednn
@pytest.mark.parametrize("with_bias", [False, True])
def test_onednn_tiles_match_float64(with_bias):
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
        assert (tile.double() - want).abs().max() < 1e-4


def test_a_strided_weight_goes_to_torch_mm_into_the_buffer():
    """oneDNN was many times slower than MKL on a strided weight: a contiguous
    ``[d_model, d_vocab]`` W_U (W_U.T strided) must not reach it; torch.mm fills ``out``."""
    rows, W_U = torch.randn(2, 8), torch.randn(8, 16)
    assert "not contiguous" in tm.onednn_unavailable_reason(rows, W_U)
    assert tm.matmul_backend(rows, W_U) == "torch.mm"
    out = torch.empty(2, 4)
    tile = tm.tile_matmul(rows, W_U, torch.ones(16), 4, 8, out)
    assert tile.data_ptr() == out.data_ptr()
    assert torch.allclose(tile, rows @ W_U[:, 4:8] + 1, atol=1e-5)


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
    assert (a.entropy - b.entropy).abs().max() < 1e-4
    assert (a.kl_to_final - b.kl_to_final).abs().max() < 1e-4
    clear = (a.top_probs[..., 0] - a.top_probs[..., 1]) > 1e-5
    assert torch.equal(a.top_ids[..., 0][clear], b.top_ids[..., 0][clear])
    assert clear.float().mean() > 0.9
    known = targets.ne(-1).expand_as(a.target_rank)
    assert (a.target_rank - b.target_rank)[known].abs().max() <= 1


class _OwnLinear(torch.nn.Linear):
    pass


@needs_onednn
def test_linear_layers_switch_to_onednn_with_the_same_outputs():
    g = torch.Generator().manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.GELU(), torch.nn.Linear(40, 8, bias=False), _OwnLinear(8, 3))
    x = torch.randn(2, 11, 24, generator=g)  # [batch, pos, d]: oneDNN takes the leading dims as rows
    with torch.no_grad():
        want = net.double()(x.double())
        net.float()
        assert tm.use_for_linear_layers(net) == 2
        got = net(x)
    assert [type(m).__name__ for m in net] == ["OneDNNLinear", "GELU", "OneDNNLinear", "_OwnLinear"]
    assert (got.double() - want).abs().max() < 1e-5
    with torch.no_grad():  # a strided input: nn.Linear's own path, the same numbers
        strided = x.transpose(0, 1).contiguous().transpose(0, 1)
        assert not strided.is_contiguous() and torch.allclose(net(strided), got, atol=1e-6)
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
    cap = lambda z: 3.0 * torch.tanh(z / 3.0)  # a soft-cap, as Gemma 2 has
    runs = {}
    for backend in ("onednn", "torch"):
        monkeypatch.setenv("LENSLIB_MATMUL", backend)
        runs[backend] = lens_stats(resid, W_U, b_U, targets, k=3, output_transform=cap, chunk_bytes=4 * 4 * 256)
    a, b = runs["onednn"], runs["torch"]
    for name in ("entropy", "kl_to_final", "target_logprob"):
        assert (getattr(a, name) - getattr(b, name)).abs().max() < 1e-5, name
    assert torch.equal(a.top_ids, b.top_ids) and torch.equal(a.target_rank, b.target_rank)
    logits = cap(resid.double() @ W_U.double() + b_U.double())  # and both against float64
    want = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    assert (a.entropy.double() - want).abs().max() < 1e-5
