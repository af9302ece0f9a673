"""Activation patching: the two exact limits (patch everything = clean, nothing = corrupt)."""

from __future__ import annotations

import pytest
import torch

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


def _check_limits(model, clean, corrupt, answer, atol):
    hooks, corrupt_ids, clean_resid, a, clean_logits, corrupt_logits = _setup(model, clean, corrupt, answer)

    def logits_at_last(logits):  # the whole last-position logit vector, to compare exactly
        return logits[:, -1].double()

    every = [(layer, None) for layer in range(len(hooks))]
    patched = run_patched(model, corrupt_ids, clean_resid, every + [()], hooks, logits_at_last, batch_size=3)
    clean_last, corrupt_last = clean_logits[0, -1].double(), corrupt_logits[0, -1].double()
    assert (clean_last - corrupt_last).abs().max() > 10 * atol  # the two runs really differ
    for row in range(len(hooks)):  # every layer, patched at every position: the clean run
        torch.testing.assert_close(patched[row], clean_last, atol=atol, rtol=0)
    torch.testing.assert_close(patched[-1], corrupt_last, atol=atol, rtol=0)  # nothing: corrupt
    return a


def test_patching_everything_gives_clean_nothing_gives_corrupt(tiny):
    _check_limits(tiny, CLEAN, CORRUPT, "c", atol=1e-5)


def test_patch_layers_result(tiny):
    result = patch_layers(tiny, CLEAN, CORRUPT, target="c", metric="logit", batch_size=4)
    assert result.restored.shape == (3, 6) and result.layer_labels == ["0_pre", "1_pre", "final_post"]
    assert result.clean_tokens[3] == "c" and result.corrupt_tokens[3] == "d"
    # positions before the changed token hold the same stream in both runs: nothing to restore
    assert torch.all(result.restored[:, :3] == 0)
    # the final stream at the last position is everything the logits see: fully restored
    assert result.restored[-1, -1] == pytest.approx(1.0, abs=1e-5)
    # the embeddings at the changed token: the clean input again, so the clean run exactly
    assert result.restored[0, 3] == pytest.approx(1.0, abs=1e-5)
    # restored fraction and raw metric agree
    expected = (result.metric.double() - result.corrupt_value) / (result.clean_value - result.corrupt_value)
    torch.testing.assert_close(result.restored.double(), expected, atol=1e-5, rtol=0)
    # skipping provable no-ops changes nothing
    full = patch_layers(tiny, CLEAN, CORRUPT, target="c", metric="logit", skip_no_ops=False, batch_size=5)
    torch.testing.assert_close(full.metric, result.metric, atol=1e-5, rtol=0)


def test_prob_and_logit_diff_metrics(tiny):
    prob = patch_layers(tiny, CLEAN, CORRUPT, target="c")
    assert prob.metric_name == "prob" and 0 < prob.clean_value < 1
    diff = patch_layers(tiny, CLEAN, CORRUPT, target="c", versus="d")
    assert diff.metric_name == "logit_diff"
    with torch.no_grad():
        logits = tiny(tiny.to_tokens(CLEAN))[0, -1:].double()
    assert diff.clean_value == pytest.approx(float(metric_value(logits, "logit_diff", tiny.to_single_token("c"), tiny.to_single_token("d"))), abs=1e-6)
    assert prob.clean_value == pytest.approx(float(logits.softmax(-1)[0, tiny.to_single_token("c")]), abs=1e-7)


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
                  "The Colosseum is located in the city of", " Paris", atol=2e-3)
