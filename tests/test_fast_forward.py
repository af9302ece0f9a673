"""The SDPA residual-only forward (lenslib.core.forward) against the bridge's eager run_with_cache.

The bridge is the reference: the same residual stream within fp32 tolerance, and the same lens
up to ties, on the tiny model and both bundled models. The Gemma test runs past the model's
512-token sliding window, so local attention is exercised too.
"""

from __future__ import annotations

import pytest
import torch

import lenslib
from lenslib.core.bridge import residual_hooks
from lenslib.core.forward import residual_cache, sdpa_unavailable_reason
from numerics import assert_lens_agrees, assert_within, decoded, longest_reduction, stream_tolerance

PROMPTS = ["The cat sat on the mat.", "Hi!", "Right padding must never reach a real position."]


def _assert_same_stream(model, tokens, names, mask=None):
    bridge, path_b = residual_cache(model, tokens, names, attention_mask=mask, forward="bridge")
    sdpa, path_s = residual_cache(model, tokens, names, attention_mask=mask, forward="sdpa")
    assert (path_b, path_s) == ("bridge", "sdpa")
    assert sorted(sdpa.keys()) == sorted(names) and set(names) <= set(bridge.keys())
    longest = longest_reduction(model, tokens.shape[-1])
    for name in names:
        ref, got = bridge[name], sdpa[name]
        assert got.shape == ref.shape and got.dtype == ref.dtype
        rows = slice(None) if mask is None else mask.bool()
        # numerics step 6: one worst-case reduction of the path's longest length, gamma_K max|ref|
        assert_within(got[rows], ref[rows], stream_tolerance(longest, ref[rows]), name)
    stack_b = bridge.accumulated_resid(apply_ln=True, incl_mid=any("mid" in n for n in names))
    stack_s = sdpa.accumulated_resid(apply_ln=True, incl_mid=any("mid" in n for n in names))
    for layer, (got, ref) in enumerate(zip(stack_s, stack_b)):  # the same criterion, per layer
        assert_within(got, ref, stream_tolerance(longest, ref), f"normalised stream, layer {layer}")
    return bridge, sdpa


def _assert_same_lens(model, fast, slow, incl_mid=False, batch=None):
    """Identical lens results up to float32 rounding (tests/numerics.py, assert_lens_agrees).
    ``batch``: the results that ran with ``fast`` in one batch."""
    assert fast.forward_path == "sdpa" and slow.forward_path == "bridge"
    assert torch.equal(fast.input_ids, slow.input_ids) and fast.layer_labels == slow.layer_labels
    batch = batch or [fast]
    where = next(i for i, result in enumerate(batch) if result is fast)
    rows_fast = decoded(model, batch, "sdpa", incl_mid)[where]
    rows_slow = decoded(model, [slow], "bridge", incl_mid)[0]
    assert_lens_agrees(model, fast, slow, rows_fast, rows_slow)


def test_tiny_residual_stream_matches_the_bridge(tiny):
    tokens = tiny.to_tokens("The quick brown fox jumps over the lazy dog.")
    _assert_same_stream(tiny, tokens, residual_hooks(int(tiny.cfg.n_layers), incl_mid=True))


def test_tiny_lens_matches_the_bridge_all_paths(tiny):
    for kwargs in ({}, {"incl_mid": True}, {"positions": "last"}, {"positions": [0, -2]},
                   {"target": " "}):
        fast = lenslib.logit_lens(tiny, PROMPTS[0], k=4, **kwargs)
        slow = lenslib.logit_lens(tiny, PROMPTS[0], k=4, forward="bridge", **kwargs)
        _assert_same_lens(tiny, fast, slow, incl_mid=kwargs.get("incl_mid", False))


def test_tiny_batch_with_right_padding_matches_single_runs(tiny):
    batched = lenslib.logit_lens(tiny, PROMPTS, k=3, batch_size=3)
    for prompt, got in zip(PROMPTS, batched):
        alone = lenslib.logit_lens(tiny, prompt, k=3, forward="bridge")
        _assert_same_lens(tiny, got, alone, batch=batched)
    lengths = [r.input_ids.numel() for r in batched]
    assert len(set(lengths)) == 3  # the batch really is padded


def test_tiny_padded_stream_matches_the_bridge(tiny):
    tokens = [tiny.to_tokens(p)[0] for p in PROMPTS]
    batch = torch.zeros(len(tokens), max(t.numel() for t in tokens), dtype=torch.long)
    mask = torch.zeros_like(batch)
    for row, ids in enumerate(tokens):
        batch[row, : ids.numel()], mask[row, : ids.numel()] = ids, 1
    _assert_same_stream(tiny, batch, residual_hooks(int(tiny.cfg.n_layers), incl_mid=True), mask)


def test_bos_handling_is_unchanged(tiny):
    for prepend_bos in (None, True, False):
        fast = lenslib.logit_lens(tiny, "abc", prepend_bos=prepend_bos)
        slow = lenslib.logit_lens(tiny, "abc", prepend_bos=prepend_bos, forward="bridge")
        assert torch.equal(fast.input_ids, slow.input_ids)
        assert fast.str_tokens == slow.str_tokens
    assert lenslib.logit_lens(tiny, "abc").str_tokens[0] == "<bos>"
    assert lenslib.logit_lens(tiny, "abc", prepend_bos=False).str_tokens[0] == "a"


def test_pos_slice_keeps_one_position(tiny):
    tokens = tiny.to_tokens("abcdef")
    names = residual_hooks(int(tiny.cfg.n_layers), False)
    full, _ = residual_cache(tiny, tokens, names, forward="sdpa")
    one, path = residual_cache(tiny, tokens, names, pos_slice=4, forward="sdpa")
    assert path == "sdpa"
    for name in names:
        assert one[name].shape == (1, 1, 32)
        assert torch.equal(one[name], full[name][:, 4:5])


def test_falls_back_to_the_bridge_when_a_hook_is_attached(tiny):
    names = residual_hooks(int(tiny.cfg.n_layers), False)
    assert sdpa_unavailable_reason(tiny, names) is None
    seen = []
    tiny.blocks[0].hook_resid_pre.add_hook(lambda act, hook: seen.append(hook.name))
    try:
        reason = sdpa_unavailable_reason(tiny, names)
        assert reason is not None and "hooks are attached" in reason
        result = lenslib.logit_lens(tiny, "abc")
        assert result.forward_path == "bridge" and seen  # the user's hook ran
        with pytest.raises(ValueError, match="forward='sdpa' cannot reproduce the bridge"):
            lenslib.logit_lens(tiny, "abc", forward="sdpa")
    finally:
        tiny.reset_hooks()
    assert lenslib.logit_lens(tiny, "abc").forward_path == "sdpa"


def test_falls_back_for_other_hooks_and_processed_weights():
    from lenslib.models.random_weights import tiny_model

    model = tiny_model()
    assert "hooks other than the residual stream" in sdpa_unavailable_reason(model, ["blocks.0.attn.hook_pattern"])
    model.enable_compatibility_mode()
    assert "compatibility mode" in sdpa_unavailable_reason(model, ["blocks.0.hook_resid_pre"])
    assert lenslib.logit_lens(model, "abc").forward_path == "bridge"


def test_bad_forward_value(tiny):
    with pytest.raises(ValueError, match="forward must be one of"):
        lenslib.logit_lens(tiny, "abc", forward="flash")


def test_shadow_shares_the_bridges_weights(tiny):
    from lenslib.core.forward import sdpa_shadow

    shadow, layers_path, ln2_name = sdpa_shadow(tiny)
    assert (layers_path, ln2_name) == ("model.layers", "post_attention_layernorm")
    assert shadow.config._attn_implementation == "sdpa"
    assert tiny.original_model.config._attn_implementation == "eager"  # the bridge is untouched
    q_bridge = tiny.blocks[0].attn.original_component.q_proj.original_component.weight
    assert shadow.model.layers[0].self_attn.q_proj.weight.data_ptr() == q_bridge.data_ptr()
    assert sdpa_shadow(tiny)[0] is shadow  # built once


def test_tiny_sdpa_stream_matches_hugging_face_hidden_states(tiny, tiny_hf):
    """Independent of the bridge: Hugging Face's own hidden states are the block inputs."""
    tokens = tiny.to_tokens("Hello there, world")
    names = residual_hooks(int(tiny.cfg.n_layers), False)
    cache, _ = residual_cache(tiny, tokens, names, forward="sdpa")
    with torch.no_grad():
        hidden = tiny_hf(tokens, output_hidden_states=True).hidden_states
    longest = longest_reduction(tiny, tokens.shape[-1])
    for layer in range(int(tiny.cfg.n_layers)):  # numerics step 6: gamma_K max|hidden|
        ref = hidden[layer]
        assert_within(cache[f"blocks.{layer}.hook_resid_pre"], ref, stream_tolerance(longest, ref), str(layer))


@pytest.mark.real_model
@pytest.mark.parametrize("name, n_tokens", [("smollm2-135m", 200), ("gemma-3-270m", 600)])
def test_real_models_residual_stream_and_lens_match_the_bridge(name, n_tokens, request):
    from pathlib import Path

    model = request.getfixturevalue("smollm2" if name.startswith("smollm2") else "gemma")
    text = (Path(__file__).resolve().parents[1] / "bench" / "passage.txt").read_text()
    tokens = model.to_tokens(text)[:, :n_tokens]
    assert tokens.shape == (1, n_tokens)
    _assert_same_stream(model, tokens, residual_hooks(int(model.cfg.n_layers), incl_mid=True))
    prompt = "The Eiffel Tower is located in the city of"
    fast = lenslib.logit_lens(model, prompt, k=5, target=" Paris", incl_mid=True)
    slow = lenslib.logit_lens(model, prompt, k=5, target=" Paris", incl_mid=True, forward="bridge")
    _assert_same_lens(model, fast, slow, incl_mid=True)


def test_shadow_is_rebuilt_when_the_bridges_tensors_change():
    from lenslib.core.forward import sdpa_shadow
    from lenslib.models.random_weights import tiny_model

    model = tiny_model()
    shadow = sdpa_shadow(model)[0]
    q_proj = model.blocks[0].attn.original_component.q_proj.original_component
    q_proj.weight.data.mul_(2.0)  # in place: the shadow shares the memory, nothing to rebuild
    assert sdpa_shadow(model)[0] is shadow
    q_proj.weight = torch.nn.Parameter(q_proj.weight.detach() * 0.5)  # replaced
    rebuilt = sdpa_shadow(model)[0]
    assert rebuilt is not shadow
    assert rebuilt.model.layers[0].self_attn.q_proj.weight.data_ptr() == q_proj.weight.data_ptr()
    model.to(torch.float64)  # cast: new data everywhere
    assert sdpa_shadow(model)[0] is not rebuilt
    cache, path = residual_cache(model, model.to_tokens("abc"), ["blocks.1.hook_resid_post"])
    assert path == "sdpa" and cache["blocks.1.hook_resid_post"].dtype == torch.float64


def test_a_dropped_model_is_freed_after_the_lens_ran():
    """The shadow and the snapshot live on the models, so nothing global keeps a model alive."""
    import gc
    import weakref

    from lenslib.models.random_weights import tiny_model

    model = tiny_model()
    assert lenslib.logit_lens(model, "abc").forward_path == "sdpa"
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None
