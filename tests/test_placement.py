"""Dtype and devices: load_model(dtype=bfloat16) end to end, device_map / n_devices passed through."""

from __future__ import annotations

import pytest
import torch

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
    assert torch.equal(got.top_ids, ref.top_ids)
    torch.testing.assert_close(got.entropy, ref.entropy, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.target_prob, ref.target_prob, atol=1e-7, rtol=0)


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
    # bf16 keeps ~3 significant digits of the residual stream; measured on this prompt the
    # entropies move by at most a few tenths of a nat and the final top-1 is unchanged
    assert (got.entropy - ref.entropy).abs().max() < 0.5
    assert torch.equal(got.top_ids[-1, :, 0], ref.top_ids[-1, :, 0])
    assert (got.top_ids[..., 0] == ref.top_ids[..., 0]).float().mean() > 0.8
    hf = AutoModelForCausalLM.from_pretrained(
        lenslib.models.loading.hf_model_dir("smollm2-135m"), dtype=torch.bfloat16,
        attn_implementation="sdpa" if forward == "sdpa" else "eager",
    )
    with torch.no_grad():
        own = hf(got.input_ids.view(1, -1)).logits[0].float().softmax(-1)
    assert torch.equal(got.top_ids[-1, :, 0], own.argmax(-1))
    torch.testing.assert_close(got.top_probs[-1], own.gather(-1, got.top_ids[-1]), atol=2e-2, rtol=0)
