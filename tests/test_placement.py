"""Dtype and devices: load_model(dtype=bfloat16) end to end, device_map / n_devices passed through."""

from __future__ import annotations

import pytest
import torch
from numerics import (
    SUBNORMAL32, U32, UBF16, assert_lens_agrees, assert_top_ids_agree, assert_within, decoded,
    fraction, lens_tolerances, sum_error, tile_columns, weights_shift,
)

import lenslib
from lenslib.models.placement import Placement, resolve_placement

PROMPT = "The Eiffel Tower is located in the city of"


def test_resolve_placement_one_device_and_maps():
    assert resolve_placement("cpu", None, None) == Placement("cpu", None, None)
    assert resolve_placement("cpu", None, 1) == Placement("cpu", None, None)
    spread = resolve_placement(None, {"": "cpu"}, None)
    assert spread.device is None and spread.device_map == {"": "cpu"}
    assert spread.boot_kwargs(preloaded=True) == {}  # the bridge reads hf_device_map instead
    assert spread.boot_kwargs(preloaded=False) == {"device_map": {"": "cpu"}}
    assert resolve_placement("cpu", None, None).boot_kwargs(preloaded=True) == {"device": "cpu"}


def test_resolve_placement_refuses_conflicts():
    with pytest.raises(ValueError, match="not both"):
        resolve_placement("cpu", "auto", None)
    with pytest.raises(ValueError, match="not both"):
        resolve_placement("cpu", None, 2)
    with pytest.raises(ValueError, match="n_devices must be a positive int"):
        resolve_placement(None, None, 0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="requires CUDA"):
            resolve_placement(None, None, 2)


def test_tiny_model_refuses_a_device_map():
    with pytest.raises(ValueError, match="one device"):
        lenslib.load_model("tiny-llama", device_map={"": "cpu"})


@pytest.mark.real_model
def test_one_device_map_on_cpu_gives_the_same_lens(smollm2, monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = []
    original = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    mapped = lenslib.load_model("smollm2-135m", device_map={"": "cpu"})
    assert seen and seen[-1]["device_map"] == {"": "cpu"}  # handed to Hugging Face's loader
    assert str(mapped.cfg.device) == "cpu" and mapped.W_U.device.type == "cpu"
    assert not mapped.training
    got = lenslib.logit_lens(mapped, PROMPT, target=" Paris")
    ref = lenslib.logit_lens(smollm2, PROMPT, target=" Paris")
    assert got.forward_path == ref.forward_path == "sdpa"  # one device: the fast path still applies
    # the same weights and path; tests/numerics.py's bounds on whatever the rows differ by
    assert_lens_agrees(smollm2, got, ref, decoded(mapped, [got], "sdpa")[0], decoded(smollm2, [ref], "sdpa")[0])


@pytest.mark.real_model
@pytest.mark.parametrize("forward", ["sdpa", "bridge"])
def test_bfloat16_bundled_model_end_to_end(smollm2, forward):
    """bf16 weights, float32 statistics; close to the fp32 lens, and the last layer is the bf16
    model's own prediction (Hugging Face's own forward, independent of the bridge)."""
    from transformers import AutoModelForCausalLM

    bf16 = lenslib.load_model("smollm2-135m", dtype=torch.bfloat16)
    assert bf16.W_U.dtype == torch.bfloat16
    got = lenslib.logit_lens(bf16, PROMPT, k=5, target=" Paris", forward=forward)
    ref = lenslib.logit_lens(smollm2, PROMPT, k=5, target=" Paris")
    assert got.forward_path == forward
    for name in ("entropy", "kl_to_final", "top_probs", "target_prob", "target_logprob"):
        assert getattr(got, name).dtype == torch.float32, name
    assert (got.kl_to_final[-1] == 0).all() and (got.kl_to_final >= 0).all()
    # against the float32 model: bf16 weights and forward; tests/numerics.py's bounds on the
    # measured difference of the rows, the weights' spread and bf16 logits (weights_shift)
    rows = decoded(bf16, [got], forward)[0]
    delta = weights_shift(rows, decoded(smollm2, [ref], "sdpa")[0], bf16.W_U, smollm2.W_U, stored_a=UBF16)
    tol = lens_tolerances(delta, got, ref, columns=tile_columns(smollm2))
    assert_within(got.entropy, ref.entropy, tol["entropy"], "bf16 entropy")
    # a bf16 forward moves the rows themselves (||h_bf - h_32|| grows with depth), so past the
    # first layers most top-1s lie inside that window: the ids are checked where they are
    # separated (about 5% of cells here), the tight check is the one below, against the bf16 model
    assert_top_ids_agree(got.top_ids, ref.top_ids, ref.top_probs, delta)
    hf = AutoModelForCausalLM.from_pretrained(
        lenslib.models.loading.hf_model_dir("smollm2-135m"), dtype=torch.bfloat16,
        attn_implementation="sdpa" if forward == "sdpa" else "eager",
    )
    with torch.no_grad():
        out = hf(got.input_ids.view(1, -1), output_hidden_states=True)
    own = out.logits[0].float().log_softmax(-1)
    # the bf16 model's own prediction: its final rows (normed) against the lens's last layer
    delta = weights_shift(rows[-1], out.hidden_states[-1][0], bf16.W_U, bf16.W_U, UBF16, UBF16)
    top = own.topk(5, dim=-1)
    separated = assert_top_ids_agree(got.top_ids[-1:], top.indices[None], top.values.exp()[None], delta[None])
    assert fraction(separated[..., 0]) > 0.5  # most top-1s are checked, not waived as near-ties
    own_probs = own.gather(-1, got.top_ids[-1]).exp()
    rtol = torch.expm1(2 * delta + 2 * sum_error(tile_columns(smollm2))) + 2 * U32
    larger = torch.maximum(got.top_probs[-1], own_probs).double()
    assert_within(got.top_probs[-1], own_probs, larger * rtol.unsqueeze(-1) + 2 * SUBNORMAL32, "the model's own")
