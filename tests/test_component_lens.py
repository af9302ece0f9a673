"""The component lens against a float64 reference computed from the Hugging Face modules alone
(eager attention weights, ``v_proj`` outputs, ``o_proj`` weights, the norms' own formulas), and
against :func:`lenslib.attribute` at the last position."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import lenslib
from lenslib.causal.component_lens import component_lens

PROMPT, TARGET = "The Eiffel Tower is located in the city of", " Paris"


@torch.no_grad()
def reference(hf_model, ids: torch.Tensor, q: int, target: int, versus=None) -> dict:
    """Float64 from Hugging Face: each block's attention and MLP output at ``q`` read along
    ``g * (W_U[target] - W_U[versus]) / s`` (final norm scale ``s`` frozen at ``q``), and the
    attention split by head and source, ``weights[h, q, k] * v[k, h] @ W_O[h]`` (Gemma: times
    the post-attention norm's ``(1 + w) / s_post``). Gemma's RMSNorm modules compute in float32
    even in a float64 model; everything read here in float64 is recomputed from the weights."""
    hf = copy.deepcopy(hf_model).double().eval()
    hf.set_attn_implementation("eager")
    layers = hf.model.layers
    gemma = hasattr(layers[0], "post_feedforward_layernorm")
    seen: dict = {}

    def keep(name, index=None):
        def hook(_module, _inputs, output):
            seen[name] = output if index is None else output[index]
        return hook

    handles = []
    for l, layer in enumerate(layers):
        handles.append(layer.self_attn.register_forward_hook(keep(f"{l}.raw", 0)))
        handles.append(layer.self_attn.register_forward_hook(keep(f"{l}.weights", 1)))
        handles.append(layer.self_attn.v_proj.register_forward_hook(keep(f"{l}.v")))
        handles.append((layer.post_attention_layernorm if gemma else layer.self_attn).register_forward_hook(
            keep(f"{l}.attn", None if gemma else 0)))
        handles.append((layer.post_feedforward_layernorm if gemma else layer.mlp).register_forward_hook(keep(f"{l}.mlp")))
    handles.append(hf.model.norm.register_forward_pre_hook(lambda _m, args: seen.__setitem__("final", args[0])))
    try:
        out = hf(ids.view(1, -1), output_attentions=True)
    finally:
        for handle in handles:
            handle.remove()
    config = hf.config
    eps = config.rms_norm_eps
    x = seen["final"][0, q]
    w_u = hf.lm_head.weight  # [vocab, d_model]
    gain = hf.model.norm.weight + (1.0 if gemma else 0.0)
    read = gain / (x.pow(2).mean() + eps).sqrt()
    readout = read * (w_u[target] - (w_u[versus] if versus is not None else 0.0))
    n_heads, d_head = config.num_attention_heads, config.head_dim
    attn, mlp, parts, weights = [], [], [], []
    for l, layer in enumerate(layers):
        attn.append(seen[f"{l}.attn"][0, q] @ readout)
        mlp.append(seen[f"{l}.mlp"][0, q] @ readout)
        w = seen[f"{l}.weights"][0, :, q, : q + 1]  # [head, src]
        v = seen[f"{l}.v"][0, : q + 1].view(q + 1, -1, d_head).repeat_interleave(
            n_heads // config.num_key_value_heads, dim=1)  # [src, head, d_head]
        w_o = layer.self_attn.o_proj.weight.view(-1, n_heads, d_head)  # [d_model, head, d_head]
        part = torch.einsum("hk,khd,mhd->hkm", w, v, w_o)
        if gemma:
            raw = seen[f"{l}.raw"][0, q]
            part = part * (1.0 + layer.post_attention_layernorm.weight) / (raw.pow(2).mean() + eps).sqrt()
        parts.append(part @ readout)
        weights.append(w)
    logits = out.logits[0, q]
    total = logits[target] - (logits[versus] if versus is not None else 0.0)
    component_logits = torch.stack([seen[f"{l}.{k}"][0, q] for l in range(len(layers)) for k in ("attn", "mlp")])
    return {"attn": torch.stack(attn), "mlp": torch.stack(mlp), "by_source": torch.stack(parts),
            "attention": torch.stack(weights), "total": float(total),
            "component_logits": (component_logits * read) @ w_u.T}  # [2 * layer, vocab]


def _check(model, hf_model, prompt, target, q, atol, versus=None):
    lens = component_lens(model, prompt, target=target, position=q, versus=versus, k=3)
    ids = model.to_tokens(prompt)[0]
    versus_id = None if versus is None else model.to_single_token(versus)
    ref = reference(hf_model, ids, lens.position, model.to_single_token(target), versus_id)
    torch.testing.assert_close(lens.attn.double(), ref["attn"], atol=atol, rtol=0)
    torch.testing.assert_close(lens.mlp.double(), ref["mlp"], atol=atol, rtol=0)
    torch.testing.assert_close(lens.attn_by_source.double(), ref["by_source"], atol=atol, rtol=0)
    torch.testing.assert_close(lens.attention.double(), ref["attention"], atol=1e-4, rtol=0)
    assert lens.total == pytest.approx(ref["total"], abs=atol)
    assert abs(lens.residual) < max(1e-4, 1e-5 * abs(lens.total)) * 10
    # the parts add up: heads and sources to each block's attention
    torch.testing.assert_close(lens.attn_by_source.double().sum((1, 2)), lens.attn.double(), atol=atol, rtol=0)
    # top tokens: each output's best token is the reference's, with its logit
    ref_top = ref["component_logits"].view(-1, 2, ref["component_logits"].shape[-1]).topk(1, dim=-1)
    torch.testing.assert_close(lens.top_logits[:, :, 0].double(), ref_top.values[:, :, 0], atol=atol * 10, rtol=1e-4)
    return lens


def test_tiny_against_float64_reference(tiny, tiny_hf):
    for q in (-1, 3):
        lens = _check(tiny, tiny_hf, "abcab", "c", q, atol=1e-4)
        assert lens.attn_by_source.shape == (2, 4, lens.position + 1)
    _check(tiny, tiny_hf, "abcab", "c", -1, atol=1e-4, versus="d")


def test_agrees_with_attribute_at_the_last_position(tiny):
    lens = component_lens(tiny, "abcab", target="c", versus="d")
    attribution = lenslib.attribute(tiny, "abcab", target="c", versus="d")
    by_layer = attribution.by_layer()
    torch.testing.assert_close(lens.attn, by_layer[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(lens.mlp, by_layer[:, 1], atol=1e-5, rtol=0)
    assert lens.total == pytest.approx(attribution.total, abs=1e-5)
    assert lens.embed == pytest.approx(float(attribution.contributions[0]), abs=1e-5)


def test_result_protocol(tiny):
    lens = component_lens(tiny, "abcab", target="c", k=4)
    frame = lens.to_frame()
    assert list(frame.columns) == ["layer", "head", "source", "source_token", "attention", "contribution"]
    assert len(frame) == 2 * 4 * 6
    assert abs(frame["contribution"].sum() - float(lens.attn.sum())) < 1e-4
    layers = lens.layer_frame()
    assert len(layers) == 4 and layers["top_tokens"].str.count(r"\|").eq(3).all()
    data = json.loads(json.dumps(lens.to_dict(), allow_nan=False))
    assert data["linearisation"] == "final norm scale frozen at the position" and len(data["attn_by_source"]) == 2
    text = str(lens)
    assert lens.model_name in text and "reads from" in text and "residual" in text
    assert len(lens.top_tokens[0][0]) == 4 and len(lens.source_top_tokens[1]) == 6
    assert lens.top_sources(1, n=2)[0][0] in range(6)
    none = component_lens(tiny, "abcab", target="c", k=0)
    assert none.top_tokens[0][0] == [] and none.top_logits.shape == (2, 2, 0)


def test_bad_input(tiny):
    with pytest.raises(ValueError, match="non-empty"):
        component_lens(tiny, "", target="c")
    with pytest.raises(ValueError, match="outside the prompt"):
        component_lens(tiny, "abc", target="c", position=7)
    with pytest.raises(ValueError, match="k must be"):
        component_lens(tiny, "abc", target="c", k=-1)
    with pytest.raises(ValueError, match="2 tokens"):
        component_lens(tiny, "abc", target="cd")


@pytest.mark.real_model
def test_smollm2_against_float64_reference(smollm2, smollm2_hf):
    lens = _check(smollm2, smollm2_hf, PROMPT, TARGET, -1, atol=2e-4)  # seen: 1.2e-5
    assert lens.linearisation == "final norm scale frozen at the position"


@pytest.mark.real_model
def test_gemma_against_float64_reference(gemma, gemma_hf):
    lens = _check(gemma, gemma_hf, PROMPT, TARGET, -1, atol=5e-4)  # seen: 1.1e-5
    assert "post-attention norm scale frozen" in lens.linearisation
    # the fact Notebook 06 names: block 12's attention writes ' Paris', read from ' Eiffel'
    assert int(lens.attn.argmax()) == 12 and lens.top_sources(12, n=1)[0][1] == " Eiffel"
