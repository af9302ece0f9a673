"""Attribution and patching figures, tested by structure."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest
from numerics import U32, gamma

from lenslib.causal.attribution import attribute
from lenslib.causal.patching import patch_layers
from lenslib.plotting.attribution import contributions_figure, patching_heatmap


def test_contributions_figure(tiny):
    result = attribute(tiny, "abcab", target="c", versus="d")
    fig = contributions_figure(result, top=3)
    assert isinstance(fig, go.Figure)
    assert [t.name for t in fig.data] == ["attention", "MLP"]
    # the figure holds by_layer's float32 numbers: at most a rounding each side (4 u relative)
    assert list(fig.data[0].y) == pytest.approx(result.by_layer()[:, 0].tolist(), rel=4 * U32)
    assert list(fig.data[1].y) == pytest.approx(result.by_layer()[:, 1].tolist(), rel=4 * U32)
    title = fig.layout.title.text
    assert "final norm scale frozen" in title and "'c'" not in title and "c − d" in title
    for label, _ in result.top(3):
        assert label in title
    assert fig.layout.yaxis.title.text == "contribution to the logit difference"


def test_per_head_figure_sums_heads(tiny):
    heads = attribute(tiny, "abcab", target="c", per_head=True)
    fig = contributions_figure(heads)
    # the figure shows the heads summed per block (that they add up to the block is
    # test_attribution's check): a float32 sum of n_heads contributions, within gamma_{n_heads+1}
    # of their absolute sum (tests/numerics.py step 1), and a rounding of the value
    n_heads = int(tiny.cfg.n_heads)
    size = [sum(abs(v) for v, lab in zip(heads.contributions.tolist(), heads.component_labels) if lab.startswith(f"{l}_attn_h"))
            for l in range(int(tiny.cfg.n_layers))]
    for got, want, total in zip(fig.data[0].y, heads.by_layer()[:, 0].tolist(), size):
        assert abs(got - want) <= gamma(n_heads + 1) * total + 4 * U32 * abs(want)


def test_patching_heatmap(tiny):
    result = patch_layers(tiny, "abcab", "abdab", target="c", metric="logit")
    fig = patching_heatmap(result)
    assert isinstance(fig, go.Figure)
    assert fig.data[0].z.shape == (3, 6)
    assert list(fig.data[0].y) == ["0_pre", "1_pre", "final_post"]
    assert fig.data[0].x[3] == "3: c / d" and fig.data[0].x[1] == "1: a"
    assert fig.data[0].colorbar.title.text == "restored fraction"
    raw = patching_heatmap(result, restored=False)
    assert raw.data[0].z.tolist() == result.metric.tolist()
    assert raw.data[0].colorbar.title.text == "logit(answer)"
