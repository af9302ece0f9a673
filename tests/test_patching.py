"""Activation patching: the two exact limits (patch everything = clean, nothing = corrupt)."""

from __future__ import annotations

import math

import pytest
import torch
from numerics import U32, assert_within, longest_reduction, stream_tolerance

from lenslib.causal.patching import metric_value, patch_layers, run_patched

CLEAN, CORRUPT = "abcab", "abdab"  # the tiny model's tokenizer is one token per character


def _setup(model, clean, corrupt, answer):
    n_layers = int(model.cfg.n_layers)
    hooks = [f"blocks.{l}.hook_resid_pre" for l in range(n_layers)] + [f"blocks.{n_layers - 1}.hook_resid_post"]
    clean_ids, corrupt_ids = model.to_tokens(clean)[0], model.to_tokens(corrupt)[0]
    _, cache = model.run_with_cache(clean_ids.view(1, -1), names_filter=hooks)
    clean_resid = torch.stack([cache[h][0] for h in hooks])
    a = model.to_single_token(answer)
    with torch.no_grad():
        clean_logits, corrupt_logits = model(clean_ids.view(1, -1)), model(corrupt_ids.view(1, -1))
    return hooks, corrupt_ids, clean_resid, a, clean_logits, corrupt_logits


def _logit_tolerance(model, logits, n_pos):
    """Two runs of the same input in other batches: their logits are the end of the path, held to
    tests/numerics.py's step-6 criterion (one worst-case reduction, gamma_K max|logits|)."""
    return stream_tolerance(longest_reduction(model, n_pos), logits)


def _check_limits(model, clean, corrupt, answer):
    hooks, corrupt_ids, clean_resid, a, clean_logits, corrupt_logits = _setup(model, clean, corrupt, answer)
    atol = _logit_tolerance(model, torch.cat([clean_logits, corrupt_logits]), corrupt_ids.numel())

    def logits_at_last(logits):  # the whole last-position logit vector, to compare exactly
        return logits[:, -1].double()

    every = [(layer, None) for layer in range(len(hooks))]
    patched = run_patched(model, corrupt_ids, clean_resid, every + [()], hooks, logits_at_last, batch_size=3)
    clean_last, corrupt_last = clean_logits[0, -1].double(), corrupt_logits[0, -1].double()
    # the runs differ far beyond it, so the checks below have teeth (a margin, not a tolerance:
    # seen 2.2 vs atol 3.8e-5 on the tiny model, 19.6 vs 3.4e-3 on Gemma)
    assert (clean_last - corrupt_last).abs().max() > 10 * atol
    for row in range(len(hooks)):  # every layer, patched at every position: the clean run
        torch.testing.assert_close(patched[row], clean_last, atol=atol, rtol=0)
    torch.testing.assert_close(patched[-1], corrupt_last, atol=atol, rtol=0)  # nothing: corrupt
    return a


def test_patching_everything_gives_clean_nothing_gives_corrupt(tiny):
    _check_limits(tiny, CLEAN, CORRUPT, "c")


def test_patch_layers_result(tiny):
    result = patch_layers(tiny, CLEAN, CORRUPT, target="c", metric="logit", batch_size=4)
    assert result.restored.shape == (3, 6) and result.layer_labels == ["0_pre", "1_pre", "final_post"]
    assert result.clean_tokens[3] == "c" and result.corrupt_tokens[3] == "d"
    # positions before the changed token hold the same stream in both runs: nothing to restore
    assert torch.all(result.restored[:, :3] == 0)
    # the metric is a logit: a patched run that is the clean run in another batch is within the
    # criterion T of the clean value, so its restored fraction within T / |clean - corrupt|
    with torch.no_grad():
        logits = torch.cat([tiny(tiny.to_tokens(text)) for text in (CLEAN, CORRUPT)])
    T = _logit_tolerance(tiny, logits, 6)
    span = abs(result.clean_value - result.corrupt_value)
    # the final stream at the last position is everything the logits see: fully restored
    assert abs(float(result.restored[-1, -1]) - 1.0) <= 2 * T / span
    # the embeddings at the changed token: the clean input again, so the clean run
    assert abs(float(result.restored[0, 3]) - 1.0) <= 2 * T / span
    # restored fraction and raw metric agree: float64 arithmetic on float32 values, stored in
    # float32 (a rounding of restored, and of the metric it came from, relative to the span)
    expected = (result.metric.double() - result.corrupt_value) / (result.clean_value - result.corrupt_value)
    bound = 2 * U32 * (expected.abs() + result.metric.double().abs() / span)
    assert_within(result.restored, expected, bound, "restored")
    # skipping provable no-ops changes nothing beyond another batch's rounding
    full = patch_layers(tiny, CLEAN, CORRUPT, target="c", metric="logit", skip_no_ops=False, batch_size=5)
    assert_within(full.metric, result.metric, 2 * T, "metric")


def test_prob_and_logit_diff_metrics(tiny):
    prob = patch_layers(tiny, CLEAN, CORRUPT, target="c")
    assert prob.metric_name == "prob" and 0 < prob.clean_value < 1
    diff = patch_layers(tiny, CLEAN, CORRUPT, target="c", versus="d")
    assert diff.metric_name == "logit_diff"
    with torch.no_grad():
        logits = tiny(tiny.to_tokens(CLEAN))[0, -1:].double()
    # the clean run inside patch_layers and this one: logits within the criterion T each, so a
    # difference of two within 2T, a probability within p (e^{2T} - 1) (numerics step 3)
    T = _logit_tolerance(tiny, logits, tiny.to_tokens(CLEAN).numel())
    want = float(metric_value(logits, "logit_diff", tiny.to_single_token("c"), tiny.to_single_token("d")))
    assert abs(diff.clean_value - want) <= 2 * T
    p = float(logits.softmax(-1)[0, tiny.to_single_token("c")])
    assert abs(prob.clean_value - p) <= p * math.expm1(2 * T) + 2 * U32 * p


def test_bad_input(tiny):
    with pytest.raises(ValueError, match="same number of tokens"):
        patch_layers(tiny, "abc", "abcd", target="c")
    with pytest.raises(ValueError, match="nothing to restore"):
        patch_layers(tiny, "abc", "abc", target="c")
    with pytest.raises(ValueError, match="empty"):
        patch_layers(tiny, "abc", "abd", target="")
    with pytest.raises(ValueError, match="2 tokens"):
        patch_layers(tiny, "abc", "abd", target="cd")
    with pytest.raises(ValueError, match="needs versus"):
        patch_layers(tiny, "abc", "abd", target="c", metric="logit_diff")
    with pytest.raises(ValueError, match="metric must be"):
        patch_layers(tiny, "abc", "abd", target="c", metric="kl")


@pytest.mark.real_model
def test_gemma_limits(gemma):
    _check_limits(gemma, "The Eiffel Tower is located in the city of",
                  "The Colosseum is located in the city of", " Paris")
