"""Direct logit attribution: the sum check, and agreement with a Hugging Face float64 reference."""

from __future__ import annotations

import pytest
import torch

from lenslib.causal.attribution import attribute
from numerics import U32, UBF16, assert_within, gamma, longest_reduction, stream_tolerance
from tests.hf_reference import reference_attribution

PROMPT = "The Eiffel Tower is located in the city of"


def _ids(model, prompt):
    return model.to_tokens(prompt)[0]


def _own_parts(model, prompt):
    """What lenslib's attribution reads: the streams at the last position, ``[component, d_model]``
    (embeddings, then each block's pre -> mid -> post differences) and the final stream."""
    n = int(model.cfg.n_layers)
    names = [f"blocks.{l}.hook_resid_{k}" for l in range(n) for k in ("pre", "mid", "post")]
    with torch.no_grad():
        _, cache = model.run_with_cache(_ids(model, prompt).view(1, -1), names_filter=names)
    streams = [cache["blocks.0.hook_resid_pre"][0, -1]]
    for l in range(n):
        streams += [cache[f"blocks.{l}.hook_resid_{k}"][0, -1] for k in ("mid", "post")]
    streams = torch.stack(streams).double()  # [component, d_model]: running sums
    return torch.cat([streams[:1], streams[1:] - streams[:-1]]), streams


@torch.no_grad()
def _readout(model, x, target, versus):
    """``(r, xn, w)``: the readout ``g (w_t - w_v) / s`` of the final stream ``x``, its normalised
    value ``x g / s``, and ``|w_t| + |w_v|`` ([d_model] each, float64)."""
    g = model.ln_final(torch.ones(1, 1, x.numel(), dtype=model.W_U.dtype))[0, 0].double()
    g = g * (1.0 + float(model.cfg.eps)) ** 0.5
    s = (x.pow(2).mean() + float(model.cfg.eps)).sqrt()
    W = model.W_U.detach().double()
    t, v = model.to_single_token(target), None if versus is None else model.to_single_token(versus)
    direction = W[:, t] - (W[:, v] if v is not None else 0.0)
    size = W[:, t].abs() + (W[:, v].abs() if v is not None else 0.0)
    return g * direction / s, x * g / s, size


def _sum_check_bound(model, result, parts, streams, target, versus, u=U32, stored=0.0):
    """How far ``total`` (the model's own logit) and ``sum(contributions) + constant`` can be apart.

    With x the final stream, r the readout and xn = x g / s (tests/numerics.py's notation):
    the parts are float differences of the cached streams (``u |part|`` each, so they add up to
    ``x + rho`` with ``|rho| <= u sum|part|``); ``r`` is a product, a product and a division of
    rounded numbers (``4 u`` relative); the model's own logit rounds its norm (``gamma_{d+4}``
    per entry: a mean of d squares, a root, two products) and its dot product (``gamma_d``, plus
    ``stored`` once on output for a narrow dtype), for the target and ``versus`` each; the
    contributions are stored in float32 (``U32`` each).
    """
    d = parts.shape[-1]
    r, xn, size = _readout(model, streams[-1], target, versus)
    rho = u * parts.abs().sum(0)
    logit = (gamma(d + 4) + gamma(d) + 2 * stored) * float(xn.abs() @ size)  # norm and logit stored
    return (float(rho @ r.abs()) + 4 * u * float(streams[-1].abs() @ r.abs()) + logit
            + U32 * float(result.contributions.double().abs().sum()))


def _check_against_reference(model, hf_model, prompt, target, versus=None):
    """lenslib's attribution against Hugging Face's, derived bounds: the two forwards' streams
    are held to tests/numerics.py's step-6 criterion T = gamma_K max|stream| per entry, so each
    part (a difference of two streams) is within 2T per entry, 2T sqrt(d) in norm; a contribution
    ``part . r`` then moves by at most ``2 T sqrt(d) ||r||`` plus ``|c| T sqrt(d) / (s sqrt(d))``
    from the frozen scale ``s = ||x|| / sqrt(d)`` of a final stream within ``T sqrt(d)``."""
    result = attribute(model, prompt, target=target, versus=versus)
    t = model.to_single_token(target)
    v = None if versus is None else model.to_single_token(versus)
    labels, ref, constant, total, ref_parts = reference_attribution(hf_model, _ids(model, prompt), t, v)
    assert result.component_labels == labels
    parts, streams = _own_parts(model, prompt)
    T = stream_tolerance(longest_reduction(model, _ids(model, prompt).numel()), ref_parts.cumsum(0))
    assert_within(streams, ref_parts.cumsum(0), T, "streams at the last position")  # the criterion itself
    d = parts.shape[-1]
    r, _, _ = _readout(model, streams[-1], target, versus)
    s = float(streams[-1].pow(2).mean().sqrt())
    bound = 2 * T * d**0.5 * float(r.norm()) + ref.abs() * T / s + U32 * ref.abs()
    assert_within(result.contributions, ref, bound, "contributions")
    assert result.constant == constant  # one float subtraction of the same bias entries (0 without a bias)
    # totals: each logit within numerics' step-2 delta of the other (the normalised final streams
    # differ by at most T sqrt(d) max|g| / s)
    _, xn, size = _readout(model, streams[-1], target, versus)
    g_max = float((xn / streams[-1]).abs().nan_to_num().max())
    apart = T * d**0.5 * g_max * float(size.norm())
    assert_within(torch.tensor(result.total), torch.tensor(total), apart + 2 * (gamma(d + 4) + gamma(d)) * float(xn.abs() @ size), "total")
    # the sum check, in both computations
    assert abs(result.residual) <= _sum_check_bound(model, result, parts, streams, target, versus)
    ref_residual = total - float(ref.sum()) - constant
    assert abs(ref_residual) <= _sum_check_bound(model, result, ref_parts, ref_parts.cumsum(0), target, versus)
    return result


def test_tiny_matches_reference_and_adds_up(tiny, tiny_hf):
    result = _check_against_reference(tiny, tiny_hf, "abcab", "c")
    assert result.component_labels[:3] == ["embed", "0_attn", "0_mlp"] and len(result.component_labels) == 5
    assert result.contributions.abs().min() > 0  # non-trivial: every part writes something


def test_tiny_logit_difference(tiny, tiny_hf):
    single = {t: attribute(tiny, "abcab", target=t) for t in "cd"}
    diff = _check_against_reference(tiny, tiny_hf, "abcab", "c", versus="d")
    # the same parts, read along w_c - w_d or along each: float64 projections of float32 readouts
    # (4 u relative each, numerics' notation), stored in float32
    parts, streams = _own_parts(tiny, "abcab")
    reads = [_readout(tiny, streams[-1], t, None)[0].abs() for t in "cd"]
    bound = 4 * U32 * parts.abs() @ (reads[0] + reads[1] + _readout(tiny, streams[-1], "c", "d")[0].abs())
    bound += U32 * (diff.contributions.abs() + single["c"].contributions.abs() + single["d"].contributions.abs()).double()
    assert_within(diff.contributions, single["c"].contributions - single["d"].contributions, bound, "c - d")
    assert diff.total == single["c"].total - single["d"].total  # the same float32 logits, subtracted in float64


def _heads_bound(model, prompt, target, versus=None):
    """``[layer]``: how far the heads' contributions can add up from their block's. Each head's
    output ``z_h W_O,h`` is a float32 product (``gamma_{d_head}``), the block's ``o_proj`` of all
    heads one more (``gamma_{heads d_head}``) and ``mid - pre`` two roundings of ``|mid|``; read
    along ``r`` (tests/numerics.py step 1, elementwise)."""
    n = int(model.cfg.n_layers)
    names = [f"blocks.{l}.{k}" for l in range(n) for k in ("attn.hook_z", "hook_resid_mid")]
    with torch.no_grad():
        _, cache = model.run_with_cache(_ids(model, prompt).view(1, -1), names_filter=names)
    parts, streams = _own_parts(model, prompt)
    r = _readout(model, streams[-1], target, versus)[0].abs()
    n_heads, d_head = int(model.cfg.n_heads), int(model.cfg.d_head)
    bounds = []
    for l in range(n):
        z = cache[f"blocks.{l}.attn.hook_z"][0, -1].double().abs()  # [head, d_head]
        w_o = model.blocks[l].attn.W_O.detach().double().abs()  # [head, d_head, d_model]
        size = torch.einsum("hd,hdm->m", z, w_o)
        mid = cache[f"blocks.{l}.hook_resid_mid"][0, -1].double().abs()
        error = (gamma(d_head) + gamma(n_heads * d_head)) * size + 2 * U32 * mid
        bounds.append(float(error @ r))
    return torch.tensor(bounds, dtype=torch.float64)


def test_per_head_adds_up_to_the_attention_block(tiny):
    blocks = attribute(tiny, "abcab", target="c")
    heads = attribute(tiny, "abcab", target="c", per_head=True)
    n_heads = int(tiny.cfg.n_heads)
    assert len(heads.component_labels) == 1 + tiny.cfg.n_layers * (n_heads + 1)
    assert heads.component_labels[1:3] == ["0_attn_h0", "0_attn_h1"]
    bound = _heads_bound(tiny, "abcab", "c")
    for l in range(tiny.cfg.n_layers):
        mine = [v for v, lab in zip(heads.contributions.tolist(), heads.component_labels) if lab.startswith(f"{l}_attn_h")]
        block = float(blocks.contributions[blocks.component_labels.index(f"{l}_attn")])
        stored = U32 * (sum(abs(v) for v in mine) + abs(block))  # each stored in float32
        assert abs(sum(mine) - block) <= bound[l] + stored
    by_layer = torch.stack([bound, torch.zeros_like(bound)], -1)  # [block, (attn, mlp)]
    stored = U32 * (heads.by_layer().abs() * (n_heads + 1) + blocks.by_layer().abs()).double()
    assert_within(heads.by_layer(), blocks.by_layer(), by_layer + stored, "by layer")


@pytest.mark.parametrize("bad, match", [("", "empty"), ("cd", "2 tokens"), (10_000, "outside")])
def test_bad_targets(tiny, bad, match):
    with pytest.raises(ValueError, match=match):
        attribute(tiny, "abc", target=bad)


def test_empty_prompt(tiny):
    with pytest.raises(ValueError, match="non-empty"):
        attribute(tiny, "", target="c")


@pytest.mark.real_model
def test_smollm2_matches_reference(smollm2, smollm2_hf):
    result = _check_against_reference(smollm2, smollm2_hf, PROMPT, " Paris", versus=" London")
    heads = attribute(smollm2, PROMPT, target=" Paris", versus=" London", per_head=True)
    bound = _heads_bound(smollm2, PROMPT, " Paris", " London")  # the heads add up to the blocks
    parts, streams = _own_parts(smollm2, PROMPT)
    sum_check = _sum_check_bound(smollm2, heads, parts, streams, " Paris", " London")
    assert abs(heads.residual) <= sum_check + float(bound.sum())
    stored = U32 * (heads.by_layer().abs() * (int(smollm2.cfg.n_heads) + 1) + result.by_layer().abs()).double()
    by_layer = torch.stack([bound, torch.zeros_like(bound)], -1) + stored
    assert_within(heads.by_layer(), result.by_layer(), by_layer, "by layer")


@pytest.mark.real_model
def test_gemma_matches_reference_and_refuses_heads(gemma, gemma_hf):
    _check_against_reference(gemma, gemma_hf, PROMPT, " Paris")
    with pytest.raises(ValueError, match="per-head attribution is not exact"):
        attribute(gemma, PROMPT, target=" Paris", per_head=True)


@pytest.mark.real_model
def test_gemma_bfloat16_weights_attribute_like_float32(gemma):
    """bf16 weights: the final-norm check allows bf16 rounding (it refused Gemma in bf16 before);
    the parts add up to the model's own (bf16-rounded) logit difference within the sum check's
    bound for bf16 (every elementwise rounding UBF16, the logits and norm stored in bf16); the
    three largest parts are those of the float32 model. No derived bound ties bf16 contributions
    to float32 ones (numerics step 7), so the test compares their order, not their values."""
    import lenslib

    bf16 = lenslib.load_model("gemma-3-270m", dtype=torch.bfloat16)
    prompt = "The Eiffel Tower is located in the city of"
    got = attribute(bf16, prompt, target=" Paris", versus=" Rome")
    ref = attribute(gemma, prompt, target=" Paris", versus=" Rome")
    parts, streams = _own_parts(bf16, prompt)
    bound = _sum_check_bound(bf16, got, parts, streams, " Paris", " Rome", u=UBF16, stored=UBF16)
    assert abs(got.residual) <= bound < 0.5 * abs(got.total)  # worst case, yet it fixes the sign
    assert [label for label, _ in got.top(3)] == [label for label, _ in ref.top(3)]
