"""Direct logit attribution: the sum check, and agreement with a Hugging Face float64 reference."""

from __future__ import annotations

import pytest
import torch

from lenslib.causal.attribution import attribute
from tests.hf_reference import reference_attribution

PROMPT = "The Eiffel Tower is located in the city of"


def _ids(model, prompt):
    return model.to_tokens(prompt)[0]


def _check_against_reference(model, hf_model, prompt, target, versus=None, atol=1e-3):
    result = attribute(model, prompt, target=target, versus=versus)
    t = model.to_single_token(target)
    v = None if versus is None else model.to_single_token(versus)
    labels, ref, constant, total = reference_attribution(hf_model, _ids(model, prompt), t, v)
    assert result.component_labels == labels
    scale = max(abs(total), float(ref.abs().max()), 1.0)
    torch.testing.assert_close(result.contributions.double(), ref, rtol=0, atol=atol * scale)
    assert result.constant == pytest.approx(constant, abs=1e-6)
    assert result.total == pytest.approx(total, rel=1e-4, abs=1e-4)
    # the sum check, in both computations
    assert abs(result.residual) <= 1e-4 * max(abs(result.total), 1.0)
    assert float(ref.sum()) + constant == pytest.approx(total, rel=1e-4, abs=1e-4)
    return result


def test_tiny_matches_reference_and_adds_up(tiny, tiny_hf):
    result = _check_against_reference(tiny, tiny_hf, "abcab", "c", atol=1e-5)
    assert result.component_labels[:3] == ["embed", "0_attn", "0_mlp"] and len(result.component_labels) == 5
    assert result.contributions.abs().min() > 0  # non-trivial: every part writes something


def test_tiny_logit_difference(tiny, tiny_hf):
    single = {t: attribute(tiny, "abcab", target=t) for t in "cd"}
    diff = _check_against_reference(tiny, tiny_hf, "abcab", "c", versus="d", atol=1e-5)
    torch.testing.assert_close(diff.contributions, single["c"].contributions - single["d"].contributions)
    assert diff.total == pytest.approx(single["c"].total - single["d"].total, abs=1e-5)


def test_per_head_adds_up_to_the_attention_block(tiny):
    blocks = attribute(tiny, "abcab", target="c")
    heads = attribute(tiny, "abcab", target="c", per_head=True)
    n_heads = int(tiny.cfg.n_heads)
    assert len(heads.component_labels) == 1 + tiny.cfg.n_layers * (n_heads + 1)
    assert heads.component_labels[1:3] == ["0_attn_h0", "0_attn_h1"]
    for l in range(tiny.cfg.n_layers):
        summed = sum(v for v, lab in zip(heads.contributions.tolist(), heads.component_labels) if lab.startswith(f"{l}_attn_h"))
        assert summed == pytest.approx(float(blocks.contributions[blocks.component_labels.index(f"{l}_attn")]), abs=1e-5)
    torch.testing.assert_close(heads.by_layer(), blocks.by_layer(), atol=1e-5, rtol=0)


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
    assert abs(heads.residual) <= 1e-4 * abs(heads.total)
    torch.testing.assert_close(heads.by_layer(), result.by_layer(), atol=1e-3, rtol=0)


@pytest.mark.real_model
def test_gemma_matches_reference_and_refuses_heads(gemma, gemma_hf):
    _check_against_reference(gemma, gemma_hf, PROMPT, " Paris")
    with pytest.raises(ValueError, match="per-head attribution is not exact"):
        attribute(gemma, PROMPT, target=" Paris", per_head=True)


@pytest.mark.real_model
def test_gemma_bfloat16_weights_attribute_like_float32(gemma):
    """bf16 weights: the final-norm check allows bf16 rounding (it refused Gemma in bf16 before);
    the parts still add up to the model's own (bf16-rounded) logit difference to about 1%."""
    import lenslib

    bf16 = lenslib.load_model("gemma-3-270m", dtype=torch.bfloat16)
    prompt = "The Eiffel Tower is located in the city of"
    got = attribute(bf16, prompt, target=" Paris", versus=" Rome")
    ref = attribute(gemma, prompt, target=" Paris", versus=" Rome")
    assert abs(got.residual) < 0.02 * abs(got.total)
    assert [label for label, _ in got.top(3)] == [label for label, _ in ref.top(3)]
    torch.testing.assert_close(got.contributions, ref.contributions, atol=0.1, rtol=0.05)
