"""The component lens against a float64 reference computed from the Hugging Face modules alone
(eager attention weights, ``v_proj`` outputs, ``o_proj`` weights, the norms' own formulas), and
against :func:`lenslib.attribute` at the last position."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from numerics import (
    U32, U64, assert_within, gamma, logit_error, longest_reduction, stream_tolerance, unembedding_norm,
)

import lenslib
from lenslib.causal.component_lens import component_lens
from tests.test_attribution import _own_parts, _readout

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
        out = hf(ids.view(1, -1), output_attentions=True, output_hidden_states=True)
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
    attn, mlp, parts, weights, vectors = [], [], [], [], []
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
        vectors.append(part)
    logits = out.logits[0, q]
    total = logits[target] - (logits[versus] if versus is not None else 0.0)
    component_logits = torch.stack([seen[f"{l}.{k}"][0, q] for l in range(len(layers)) for k in ("attn", "mlp")])
    return {"attn": torch.stack(attn), "mlp": torch.stack(mlp), "by_source": torch.stack(parts),
            "attention": torch.stack(weights), "total": float(total),
            "component_logits": (component_logits * read) @ w_u.T,  # [2 * layer, vocab]
            # for the bounds: what each component writes at q ([2 * layer, d_model] and [layer,
            # head, src, d_model]), the embeddings (vector and contribution), the final stream, the
            # readout, the frozen scale, the read gain and the model's logits
            "outputs": component_logits, "source_outputs": torch.stack(vectors),
            "embed_output": out.hidden_states[0][0, q], "embed": float(out.hidden_states[0][0, q] @ readout),
            "final": x, "readout": readout, "scale": float((x.pow(2).mean() + eps).sqrt()), "read": read,
            "logits": logits}


def _check(model, hf_model, prompt, target, q, versus=None):
    """The lens against the float64 reference. Every vector a component writes at q is held to
    tests/numerics.py's step-6 criterion, gamma_K times its largest entry (K: a block's longest
    reduction; a criterion, as step 6 says, not a proof), so read along the float64 readout r its
    contribution moves by at most that times ||r||_1; the final stream x to the same, so the
    frozen scale s = rms(x) (1-Lipschitz in the RMS norm) moves by gamma_K max|x| and a
    contribution c by |c| gamma_K max|x| / s; stored in float32, u |c| more. Attention weights and
    logits, ends of a path, are held to gamma_K max|ref| themselves."""
    lens = component_lens(model, prompt, target=target, position=q, versus=versus, k=3)
    ids = model.to_tokens(prompt)[0]
    versus_id = None if versus is None else model.to_single_token(versus)
    ref = reference(hf_model, ids, lens.position, model.to_single_token(target), versus_id)
    longest = longest_reduction(model, ids.numel())
    frozen = stream_tolerance(longest, ref["final"]) / ref["scale"]  # relative move of 1 / s

    def bound(c, vectors, reach=float(ref["readout"].abs().sum())):  # vectors [..., d_model] written
        return gamma(longest) * vectors.abs().amax(-1) * reach + c.abs() * frozen + U32 * c.abs()

    outputs = ref["outputs"].view(-1, 2, ref["outputs"].shape[-1])  # [layer, (attn, mlp), d_model]
    attn, mlp = bound(ref["attn"], outputs[:, 0]), bound(ref["mlp"], outputs[:, 1])
    assert_within(lens.attn, ref["attn"], attn, "attn")
    assert_within(lens.mlp, ref["mlp"], mlp, "mlp")
    by_source = bound(ref["by_source"], ref["source_outputs"])
    assert_within(lens.attn_by_source, ref["by_source"], by_source, "attn by source")
    assert_within(lens.attention, ref["attention"], stream_tolerance(longest, ref["attention"]), "attention")
    total = (1 if versus is None else 2) * stream_tolerance(longest, ref["logits"])  # one or two logits
    assert lens.total == pytest.approx(ref["total"], abs=total)
    # the sum check, through the reference: the float64 parts add up to its total (up to the
    # float64 gap measured here), and each of lens's numbers is within its bound of the reference's
    gap = ref["total"] - ref["embed"] - float(ref["attn"].sum() + ref["mlp"].sum()) - lens.constant
    parts = attn.sum() + mlp.sum() + bound(torch.tensor(ref["embed"]), ref["embed_output"])
    assert abs(lens.residual) <= total + float(parts) + abs(gap)
    # the parts add up: heads and sources to each block's attention, as the reference's do (float64)
    ref_gap = (ref["by_source"].sum((1, 2)) - ref["attn"]).abs()
    heads = by_source.sum((1, 2)) + attn + ref_gap
    assert_within(lens.attn_by_source.double().sum((1, 2)), lens.attn, heads, "heads and sources add up")
    # top tokens: each output's best token is the reference's, with its logit; every logit of a
    # component as above with r = read w_v (||read w_v||_1 <= max|read| sqrt(d) max||w_v||); the
    # top one moves no more than the largest of them
    ref_top = ref["component_logits"].view(-1, 2, ref["component_logits"].shape[-1]).topk(1, dim=-1).values[:, :, 0]
    reach = float(ref["read"].abs().max()) * outputs.shape[-1] ** 0.5 * unembedding_norm(model.W_U)[0]
    larger = torch.maximum(lens.top_logits[:, :, 0].double().abs(), ref_top.abs())
    assert_within(lens.top_logits[:, :, 0], ref_top, bound(larger, outputs, reach), "top logits")
    return lens


def test_tiny_against_float64_reference(tiny, tiny_hf):
    for q in (-1, 3):
        lens = _check(tiny, tiny_hf, "abcab", "c", q)
        assert lens.attn_by_source.shape == (2, 4, lens.position + 1)
    _check(tiny, tiny_hf, "abcab", "c", -1, versus="d")


def test_agrees_with_attribute_at_the_last_position(tiny):
    lens = component_lens(tiny, "abcab", target="c", versus="d")
    attribution = lenslib.attribute(tiny, "abcab", target="c", versus="d")
    by_layer = attribution.by_layer()
    # the same float32 stream differences, each projected along a float32-derived readout in
    # float64 (4 u relative, test_attribution's notation) and stored in float32 (u each)
    parts, streams = _own_parts(tiny, "abcab")  # embed, then attn and mlp per block
    r, xn, _ = _readout(tiny, streams[-1], "c", "d")
    r = r.abs()
    reads = 2 * 4 * U32 * parts.abs() @ r  # [component]
    blocks = reads[1:].view(-1, 2)  # [block, (attn, mlp)]
    assert_within(lens.attn, by_layer[:, 0], blocks[:, 0] + U32 * (lens.attn.abs() + by_layer[:, 0].abs()), "attn")
    assert_within(lens.mlp, by_layer[:, 1], blocks[:, 1] + U32 * (lens.mlp.abs() + by_layer[:, 1].abs()), "mlp")
    # the model's logits of the same normalised row, computed twice (attribute asks for the last
    # position's only, another matmul): each within numerics step 1's R of the exact, for c and d
    assert abs(lens.total - attribution.total) <= 2 * 2 * float(logit_error(xn, tiny.W_U))
    embed = float(attribution.contributions[0])
    assert abs(lens.embed - embed) <= float(reads[0]) + U32 * abs(embed)


def test_result_protocol(tiny):
    lens = component_lens(tiny, "abcab", target="c", k=4)
    frame = lens.to_frame()
    assert list(frame.columns) == ["layer", "head", "source", "source_token", "attention", "contribution"]
    assert len(frame) == 2 * 4 * 6
    # the frame lists attn_by_source: its float64 sum within gamma_n (float64) of theirs
    contribution = frame["contribution"]
    assert abs(contribution.sum() - float(lens.attn_by_source.double().sum())) <= gamma(len(frame), U64) * contribution.abs().sum()
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
    lens = _check(smollm2, smollm2_hf, PROMPT, TARGET, -1)
    assert lens.linearisation == "final norm scale frozen at the position"


@pytest.mark.real_model
def test_gemma_against_float64_reference(gemma, gemma_hf):
    lens = _check(gemma, gemma_hf, PROMPT, TARGET, -1)
    assert "post-attention norm scale frozen" in lens.linearisation
    # the fact Notebook 06 names: block 12's attention writes ' Paris', read from ' Eiffel'
    assert int(lens.attn.argmax()) == 12 and lens.top_sources(12, n=1)[0][1] == " Eiffel"
