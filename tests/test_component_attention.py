"""Attention patterns (against Hugging Face's eager attention weights), the heads a patching
result points to, and the figures and views of this issue, tested by structure."""

from __future__ import annotations

import copy
import json

import plotly.graph_objects as go
import pytest
import torch

from numerics import U32, assert_within, gamma, longest_reduction, stream_tolerance, sum_error

import lenslib
from lenslib.causal.attention import AttentionPatterns, attention_patterns, heads_that_matter
from lenslib.causal.component_lens import component_lens
from lenslib.causal.components import patch_components
from lenslib.plotting import (
    attention_heads_view,
    attention_pattern_figure,
    component_lens_figure,
    component_patching_figure,
    head_patching_heatmap,
    patching_heatmap,
)

CLEAN, CORRUPT = "abcab", "abdab"
# Figures hold the result's float32 numbers, widened to float64: at most a rounding each side
SAME = 4 * U32


@torch.no_grad()
def _hf_weights(hf_model, ids):
    hf = copy.deepcopy(hf_model).double().eval()
    hf.set_attn_implementation("eager")
    return [w[0].float() for w in hf(ids.view(1, -1), output_attentions=True).attentions]  # [layer] [head, q, k]


def _check_patterns(model, hf_model, prompt, heads):
    patterns = attention_patterns(model, prompt, heads=heads)
    weights = _hf_weights(hf_model, model.to_tokens(prompt)[0])
    n_pos = patterns.pattern.shape[-1]
    for i, (l, h) in enumerate(zip(patterns.layers, patterns.heads)):
        # a float32 forward against a float64 one: numerics step 6's criterion, gamma_K max|ref|
        ref = weights[l][h]
        assert_within(patterns.pattern[i], ref, stream_tolerance(longest_reduction(model, n_pos), ref), f"{l}.{h}")
    # a float32 softmax row: each exp(z - max) / sum within 2 eps of the exact (numerics step 4's
    # sum_error covers exp and the sum; one more for the division), then a float32 sum of n terms
    sums = patterns.pattern.sum(-1)
    assert_within(sums, torch.ones_like(sums), 2 * sum_error(n_pos) + gamma(n_pos), "rows sum to 1")
    assert torch.all(patterns.pattern.triu(1) == 0)  # causal: nothing from the future
    return patterns


def test_patterns_against_hugging_face(tiny, tiny_hf):
    patterns = _check_patterns(tiny, tiny_hf, "abcab", [(1, 2), (0, None)])
    assert patterns.labels == ["1_attn_h2", "0_attn_h0", "0_attn_h1", "0_attn_h2", "0_attn_h3"]
    frame = patterns.to_frame()
    assert len(frame) == 5 * (6 * 7 // 2) and frame["weight"].between(0, 1).all()
    json.dumps(patterns.to_dict(), allow_nan=False)
    assert "1_attn_h2" in str(patterns) and patterns.model_name in str(patterns)
    k, token, weight = patterns.top_sources(0, dest=-1, n=1)[0]
    assert weight == float(patterns.pattern[0, -1].max()) and token == patterns.str_tokens[k]  # the same float32


def test_heads_that_matter(tiny):
    heads = patch_components(tiny, CLEAN, CORRUPT, target="c", site="head", metric="logit")
    chosen = heads_that_matter(heads, n=3)
    strongest = heads.effect.abs()[:, 0].argsort(descending=True)[:3].tolist()
    assert chosen == [(heads.block[i], heads.head[i]) for i in strongest]
    blocks = heads_that_matter(patch_components(tiny, CLEAN, CORRUPT, target="c", site="attn"), n=1)
    assert len(blocks) == 1 and blocks[0][1] is None
    assert attention_patterns(tiny, CLEAN, heads=blocks).pattern.shape[0] == 4  # every head of that block
    with pytest.raises(ValueError, match="site='head' or 'attn'"):
        heads_that_matter(patch_components(tiny, CLEAN, CORRUPT, target="c", site="mlp"))


def test_bad_heads(tiny):
    with pytest.raises(ValueError, match="not a block"):
        attention_patterns(tiny, "abc", heads=[(2, 0)])
    with pytest.raises(ValueError, match="does not exist"):
        attention_patterns(tiny, "abc", heads=[(0, 4)])
    with pytest.raises(ValueError, match="non-empty list"):
        attention_patterns(tiny, "abc", heads=[])


def test_attention_figure_and_view(tiny):
    patterns = attention_patterns(tiny, "abcab", heads=[(0, 0), (1, 1), (1, 3)])
    fig = attention_pattern_figure(patterns, columns=2)
    assert isinstance(fig, go.Figure) and len(fig.data) == 3
    z = fig.data[1].z
    assert z.shape == (6, 6) and all(z[q][k] != z[q][k] for q in range(6) for k in range(q + 1, 6))  # future: NaN
    assert fig.data[1].z[5][3] == pytest.approx(float(patterns.pattern[1, 5, 3]), rel=SAME)
    assert list(fig.data[0].x)[1] == "1: a" and "weight" in fig.data[0].hovertemplate
    assert [a.text for a in fig.layout.annotations] == patterns.labels
    view = attention_heads_view(patterns)
    html = str(view)
    assert "unpkg.com" not in html and "CircuitsVis.AttentionHeads" in html and '"maskUpperTri": true' in html
    assert "1_attn_h3" in html


def test_view_escapes_tokens():
    patterns = AttentionPatterns(pattern=torch.tensor([[[1.0, 0.0], [0.5, 0.5]]]), layers=[0], heads=[0],
                                 str_tokens=["<img src=x onerror=alert(1)>", "</script>"], model_name="m")
    html = str(attention_heads_view(patterns))
    props = html[html.index("CircuitsVis.AttentionHeads"):]
    assert "<img" not in props and "</script>" not in props.replace("\n</script>", "")
    fig = attention_pattern_figure(patterns)
    assert "<img" not in "".join(fig.data[0].x)


def test_patching_figures(tiny):
    attn = patch_components(tiny, CLEAN, CORRUPT, target="c", site="attn", direction="noising")
    mlp = patch_components(tiny, CLEAN, CORRUPT, target="c", site="mlp", direction="noising")
    fig = patching_heatmap(attn)
    assert fig.data[0].z.shape == (2, 6) and list(fig.data[0].y) == ["0_attn", "1_attn"]
    assert "corrupt into clean" in fig.layout.title.text and fig.data[0].colorbar.title.text == "removed fraction"
    torch.testing.assert_close(torch.tensor(fig.data[0].z), attn.effect, atol=0, rtol=SAME)
    both = component_patching_figure([attn, mlp])
    assert len(both.data) == 2 and both.data[1].z.shape == (2, 6) and both.data[0].zmax == -both.data[0].zmin
    with pytest.raises(ValueError, match="same prompts"):
        component_patching_figure([attn, patch_components(tiny, CLEAN, CORRUPT, target="c", site="mlp")])
    heads = patch_components(tiny, CLEAN, CORRUPT, target="c", site="head", positions=[3, 5])
    grid = head_patching_heatmap(heads, position=3)
    assert grid.data[0].z.shape == (2, 4) and list(grid.data[0].x) == ["h0", "h1", "h2", "h3"]
    torch.testing.assert_close(torch.tensor(grid.data[0].z), heads.by_head(3), atol=0, rtol=SAME)
    with pytest.raises(ValueError, match="was not patched"):
        head_patching_heatmap(heads, position=4)


def test_component_lens_figure(tiny):
    lens = component_lens(tiny, "abcab", target="c")
    fig = component_lens_figure(lens)
    assert fig.data[0].z.shape == (2, 6) and list(fig.data[0].y) == ["0", "1"]
    torch.testing.assert_close(torch.tensor(fig.data[0].z), lens.by_source(), atol=0, rtol=SAME)
    assert "promotes" in fig.data[0].hovertemplate and len(fig.data[0].customdata) == 2


def test_exports():
    for name in ("patch_components", "component_lens", "ComponentLens", "attention_patterns", "AttentionPatterns",
                 "heads_that_matter"):
        assert name in lenslib.__all__ and hasattr(lenslib, name)
    for name in ("attention_heads_view", "attention_pattern_figure", "component_lens_figure",
                 "component_patching_figure", "head_patching_heatmap"):
        assert name in lenslib.plotting.__all__


@pytest.mark.real_model
def test_patterns_against_hugging_face_real(smollm2, smollm2_hf, gemma, gemma_hf):
    prompt = "The Eiffel Tower is located in the city of"
    _check_patterns(smollm2, smollm2_hf, prompt, [(0, None), (29, 8)])
    _check_patterns(gemma, gemma_hf, prompt, [(12, None), (5, 0)])  # a global and a local (sliding) layer
