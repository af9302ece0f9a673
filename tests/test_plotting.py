"""Figures by structure: types, shapes, axis titles, hover text, escaping, log scales."""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import plotly.graph_objects as go
import pytest
from numerics import U32, gamma

import lenslib
from lenslib.plotting.lens import (
    GRID_STATS,
    clean_token,
    configure_static_images,
    cross_model_trajectories,
    lens_grid,
    stat_profile,
    target_trajectory,
)

# Figures hold the lens's float32 numbers, widened to float64 or passed through one float32 or
# float64 function (log10, a median's midpoint): at most a rounding each side, so 4 u relative.
SAME = 4 * U32


def MEAN(n):  # a mean of n non-negative float32 numbers: gamma_{n-1} for the sum, u for the division
    return gamma(n) + SAME


@pytest.fixture(scope="module")
def result(tiny):
    return lenslib.logit_lens(tiny, "Hello world", k=3)


@pytest.fixture(scope="module")
def prompts():
    return [f"abc {c}d" for c in "abcdefghijkl"]


@pytest.fixture(autouse=True)
def no_show(monkeypatch):
    def show(*args, **kwargs):
        raise AssertionError("plot functions must return figures, never show them")

    monkeypatch.setattr(go.Figure, "show", show)


def _with_tokens(result, **changes):
    """A copy of a result with some token strings replaced (no model needed)."""
    top = [[list(row) for row in layer] for layer in result.top_tokens]
    for (l, c, j), s in changes.pop("top", {}).items():
        top[l][c][j] = s
    strs = list(result.str_tokens)
    for p, s in changes.pop("inputs", {}).items():
        strs[p] = s
    return dataclasses.replace(result, top_tokens=top, str_tokens=strs)


@pytest.mark.parametrize(
    "raw, shown",
    [
        ("Ġthe", "·the"),
        ("▁the", "·the"),
        ("aĊ", "a↵"),
        ("a\nb", "a↵b"),
        ("\t", "⇥"),
        ("  ", "··"),
        ("a b ", "a b·"),
        ("", "∅"),
        ("\x00", "\\x00"),
        ("<script>", "&lt;script&gt;"),
        ("<b>&amp;</b>", "&lt;b&gt;&amp;amp;&lt;/b&gt;"),
    ],
)
def test_clean_token(raw, shown):
    assert clean_token(raw) == shown


def test_clean_token_options():
    assert clean_token(" <b>", visible_spaces=False) == " &lt;b&gt;"
    assert clean_token(" <b>", escape=False) == "·<b>"


def test_lens_grid_structure(result):
    fig = lens_grid(result)
    heat = fig.data[0]
    n_layer, n_pos = result.entropy.shape
    assert isinstance(fig, go.Figure) and isinstance(heat, go.Heatmap)
    assert np.asarray(heat.z).shape == (n_layer, n_pos) == (3, 12)
    np.testing.assert_allclose(np.asarray(heat.z, dtype=float), result.entropy.numpy(), rtol=SAME)
    assert fig.layout.xaxis.title.text == "position (input token)"
    assert fig.layout.yaxis.title.text == "layer"
    assert list(fig.layout.yaxis.ticktext) == result.layer_labels  # first layer at the bottom (y=0)
    assert list(heat.y) == [0, 1, 2]
    assert list(fig.layout.xaxis.ticktext)[:2] == ["&lt;bos&gt; [0]", "H [1]"]
    assert "nats" in heat.colorbar.title.text
    assert fig.layout.template.layout.paper_bgcolor == "white"  # plotly_white
    top1 = [[clean_token(result.top_tokens[l][c][0]) for c in range(n_pos)] for l in range(n_layer)]
    assert [list(row) for row in heat.text] == top1


def test_lens_grid_hover_lists_top_k(result):
    heat = lens_grid(result, "top1_prob").data[0]
    hover = heat.hovertext[1][4]
    assert "layer 1_pre" in hover and "input [4] l" in hover
    for tok, p in zip(result.top_tokens[1][4], result.top_probs[1, 4]):
        assert f"{clean_token(tok)}  {float(p):.3f}" in hover
    assert f"target {clean_token(result.target_tokens[4])}" in hover


def test_lens_grid_escapes_tokens(result):
    bad = _with_tokens(result, inputs={3: "<script>alert(1)</script>"}, top={(0, 2, 0): "<b>x"})
    fig = lens_grid(bad)
    heat = fig.data[0]
    texts = list(fig.layout.xaxis.ticktext) + [t for row in heat.text for t in row]
    texts += [h for row in heat.hovertext for h in row]
    assert not any("<script" in t or "<b>" in t for t in texts)
    assert "&lt;script&gt;alert(1)&lt;/script&gt; [3]" in fig.layout.xaxis.ticktext
    assert heat.text[0][2] == "&lt;b&gt;x"


@pytest.mark.parametrize("stat", list(GRID_STATS))
def test_lens_grid_every_stat(result, stat):
    fig = lens_grid(result, stat)
    assert np.asarray(fig.data[0].z, dtype=float).shape == (3, 12)
    assert fig.data[0].colorbar.title.text == GRID_STATS[stat][1]


def test_lens_grid_values(result):
    z = np.asarray(lens_grid(result, "top1_prob").data[0].z, dtype=float)
    np.testing.assert_allclose(z, result.top_probs[..., 0].numpy(), rtol=SAME)
    z = np.asarray(lens_grid(result, "target_prob").data[0].z, dtype=float)
    assert np.isnan(z[:, -1]).all()  # the last position has no next token
    np.testing.assert_allclose(z[:, :-1], result.target_prob[:, :-1].numpy(), rtol=SAME)


def test_lens_grid_kl_log_colour(result):
    heat = lens_grid(result, "kl_to_final").data[0]
    z = np.asarray(heat.z, dtype=float)
    floor = lenslib.plotting.lens.KL_FLOOR  # the figure's own offset before log10 (not a tolerance)
    np.testing.assert_allclose(z, np.log10(result.kl_to_final.double().numpy() + floor), rtol=SAME)
    np.testing.assert_allclose(z[-1], math.log10(floor), rtol=SAME)  # KL = 0 at the final layer
    ticks = dict(zip(heat.colorbar.ticktext, heat.colorbar.tickvals))
    assert ticks["0"] == pytest.approx(math.log10(floor), rel=SAME) and ticks["1"] == pytest.approx(math.log10(1 + floor), rel=SAME)


def test_lens_grid_rank_log_colour(result):
    heat = lens_grid(result, "target_rank").data[0]
    z = np.asarray(heat.z, dtype=float)
    np.testing.assert_allclose(z[:, :-1], np.log10(result.target_rank[:, :-1].double().numpy()), rtol=SAME)
    assert np.isnan(z[:, -1]).all()
    assert dict(zip(heat.colorbar.ticktext, heat.colorbar.tickvals))["10"] == pytest.approx(1.0, rel=SAME)


def test_lens_grid_layer_stride_keeps_final(tiny):
    deep = lenslib.logit_lens(tiny, "Hi", incl_mid=True)  # 5 layers: 0_pre ... final_post
    assert deep.n_layers == 5
    assert list(lens_grid(deep, layer_stride=2).layout.yaxis.ticktext) == ["0_pre", "1_pre", "final_post"]
    fig = lens_grid(deep, layer_stride=3)
    assert list(fig.layout.yaxis.ticktext) == ["0_pre", "1_mid", "final_post"]
    np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=float), deep.entropy[[0, 3, 4]].numpy(), rtol=SAME)
    with pytest.raises(ValueError, match="layer_stride"):
        lens_grid(deep, layer_stride=0)


def test_lens_grid_bad_stat(result):
    with pytest.raises(ValueError, match="'entropy', 'top1_prob', 'kl_to_final', 'target_prob', 'target_rank'"):
        lens_grid(result, "prob")


def test_target_trajectory_candidates(tiny):
    results = [lenslib.logit_lens(tiny, "Hello wor", target=t, positions="last") for t in "ldx"]
    fig = target_trajectory(results, labels=["l", "d", "x"])
    assert isinstance(fig, go.Figure) and len(fig.data) == 3
    assert [t.name for t in fig.data] == ["l", "d", "x"]
    for trace, r in zip(fig.data, results):
        assert list(trace.x) == r.layer_labels
        np.testing.assert_allclose(trace.y, r.target_prob[:, -1].numpy(), rtol=SAME)
    assert fig.layout.xaxis.title.text == "layer" and fig.layout.yaxis.title.text == "target probability"
    assert [t.name for t in target_trajectory(results).data] == ["l", "d", "x"]  # default labels


def test_target_trajectory_stats(tiny):
    r = lenslib.logit_lens(tiny, "Hello wor", target="l", positions="last")
    rank = target_trajectory(r, stat="rank")
    assert rank.layout.yaxis.type == "log"
    np.testing.assert_array_equal(rank.data[0].y, r.target_rank[:, 0].numpy())
    logp = target_trajectory(r, stat="logprob")
    np.testing.assert_allclose(logp.data[0].y, r.target_logprob[:, 0].numpy(), rtol=SAME)
    assert "nats" in logp.layout.yaxis.title.text
    with pytest.raises(ValueError, match="'prob', 'logprob', 'rank'"):
        target_trajectory(r, stat="entropy")


def test_target_trajectory_aggregates(tiny, prompts):
    results = lenslib.logit_lens(tiny, prompts, target="a", positions="last")
    fig = target_trajectory(results)  # 12 > 8 results: median and IQR band
    rows = np.stack([r.target_prob[:, 0].numpy() for r in results])
    upper, lower, median = fig.data
    np.testing.assert_allclose(median.y, np.median(rows, axis=0), rtol=SAME)
    np.testing.assert_allclose(upper.y, np.percentile(rows, 75, axis=0), rtol=SAME)
    np.testing.assert_allclose(lower.y, np.percentile(rows, 25, axis=0), rtol=SAME)
    assert lower.fill == "tonexty" and "median of 12" in median.name
    assert len(target_trajectory(results, aggregate=False).data) == 12
    assert len(target_trajectory(results[:3], aggregate=True).data) == 3


def test_target_trajectory_errors(tiny, result):
    with pytest.raises(ValueError, match="no target at chosen position 11"):
        target_trajectory(result)  # next-token target, last position
    assert len(target_trajectory(result, position=-2).data[0].y) == 3
    mid = lenslib.logit_lens(tiny, "Hi", target="a", incl_mid=True)
    with pytest.raises(ValueError, match="cross_model_trajectories"):
        target_trajectory([mid, lenslib.logit_lens(tiny, "Hi", target="a")])
    with pytest.raises(ValueError, match="2 labels for 1 results"):
        target_trajectory(mid, labels=["a", "b"])


def test_cross_model_relative_depth(tiny, prompts):
    many = lenslib.logit_lens(tiny, prompts, target="a", positions="last")
    deep = lenslib.logit_lens(tiny, "abc d", target="a", positions="last", incl_mid=True)
    fig = cross_model_trajectories({"<i>A</i>": many, "B": deep}, stat="rank")
    assert isinstance(fig, go.Figure) and len(fig.data) == 4  # band (2 traces) + median, one line
    median, line = fig.data[2], fig.data[3]
    np.testing.assert_array_equal(median.x, [0, 0.5, 1])  # i / (n - 1): exact in binary here
    np.testing.assert_array_equal(line.x, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_array_equal(line.y, deep.target_rank[:, 0].numpy())
    assert median.line.color != line.line.color
    assert median.name.startswith("&lt;i&gt;A&lt;/i&gt;") and line.name == "B"
    assert fig.layout.yaxis.type == "log"
    assert fig.layout.xaxis.title.text.startswith("relative depth")


def test_stat_profile(tiny, prompts):
    many = lenslib.logit_lens(tiny, prompts, positions="last")
    fig = stat_profile({"tiny": many}, "entropy")
    rows = np.stack([r.entropy[:, 0].numpy() for r in many])
    np.testing.assert_allclose(fig.data[-1].y, rows.mean(axis=0), rtol=MEAN(len(rows)))
    assert fig.layout.yaxis.title.text == "entropy (nats)"
    med = stat_profile({"tiny": many}, "kl_to_final", reduce="median")
    kl = np.stack([r.kl_to_final[:, 0].numpy() for r in many])
    np.testing.assert_allclose(med.data[-1].y, np.median(kl, axis=0), rtol=SAME)
    assert med.data[-1].y[-1] == 0.0
    assert med.layout.yaxis.type != "log"
    assert stat_profile({"tiny": many}, "kl_to_final", log_y=True).layout.yaxis.type == "log"
    with pytest.raises(ValueError, match="'entropy', 'kl_to_final'"):
        stat_profile({"tiny": many}, "prob")
    with pytest.raises(ValueError, match="reduce"):
        stat_profile({"tiny": many}, reduce="max")


def test_configure_static_images_without_browser(monkeypatch):
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    with pytest.raises(RuntimeError, match="apt-get install chromium"):
        configure_static_images(browser="/nonexistent/chrome", keep_browser=False)


def test_static_png_export(monkeypatch, result):
    import plotly.io as pio
    from choreographer.browsers.chromium import Chromium

    path = os.environ.get("BROWSER_PATH") or Chromium.find_browser(skip_local=False)
    if not path:
        pytest.skip("no Chrome/Chromium for kaleido (apt-get install chromium)")
    monkeypatch.setenv("BROWSER_PATH", path)
    monkeypatch.setattr(pio.renderers, "default", pio.renderers.default)
    assert configure_static_images(keep_browser=False) == path
    assert pio.renderers.default == "plotly_mimetype+png"
    png = lens_grid(result).to_image(format="png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_recall_trajectories_keep_every_legend_entry_in_the_static_image():
    """Eleven relations once lost the last legend entry in the PNG (the figure was too short)."""
    import pandas as pd
    import torch

    from lenslib.plotting.lens import recall_trajectories
    from lenslib.recall.analysis import RecallRun

    relations = [f"relation_{i}" for i in range(11)]
    table = pd.DataFrame({"relation": [r for r in relations for _ in range(2)]})
    run = RecallRun(items=[], table=table, ranks=torch.ones(22, 4, dtype=torch.long),
                    probs=torch.rand(22, 4, generator=torch.Generator().manual_seed(0)),
                    layer_labels=["0_pre", "1_pre", "2_pre", "final_post"])
    fig = recall_trajectories(run, stat="prob")
    legend = [t.name for t in fig.data if t.showlegend is not False]
    assert [n.split(" (")[0] for n in legend] == relations
    assert fig.layout.height >= 260 + 32 * len(relations)  # the figure's sizing rule (px), not a tolerance
    assert recall_trajectories(run, stat="rank", by_relation=False).layout.height == 500
