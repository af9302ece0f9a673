"""Axes that read in a static image: log ticks written as plain numbers at powers of ten, no line
to KL = 0, notes clear of the axis titles, panel tick labels that do not overlap."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import lenslib
from lenslib.plotting.lens import readable_ticks
from lenslib.plotting.tuned import heldout_figure
from lenslib.recall.analysis import RecallRun

GEMMA_LABELS = [f"{i}_pre" for i in range(18)] + ["final_post"]  # Gemma 3 270M's 19 lens layers
# The tick labels a reader should see for 0.001 ... 100,000: plain numbers, never SI ("100m", "1k").
PLAIN_POWERS = ["0.001", "0.01", "0.1", "1", "10", "100", "1,000", "10,000", "100,000"]
# Arial's digits and lower-case letters are at most about 0.56 em wide; 0.6 em per character
# over-estimates a label, so labels this far apart surely do not touch.
CHAR_EM = 0.6


def fake_run(n_relations: int, ranks: torch.Tensor | None = None, labels=GEMMA_LABELS, per_relation: int = 3):
    """A RecallRun without a model: ``per_relation`` prompts per relation, probabilities from a seed."""
    n = n_relations * per_relation
    table = pd.DataFrame({"relation": [f"relation_{i}" for i in range(n_relations) for _ in range(per_relation)]})
    probs = torch.rand(n, len(labels), generator=torch.Generator().manual_seed(0))
    ranks = ranks if ranks is not None else torch.ones(n, len(labels), dtype=torch.long)
    return RecallRun(items=[], table=table, ranks=ranks, probs=probs, layer_labels=list(labels))


def log_figures(tiny):
    """Every figure of lenslib.plotting that has a log y axis, by name."""
    one = lenslib.logit_lens(tiny, "abc", target="d", positions="last")
    plain = lenslib.logit_lens(tiny, "abc", positions="last")
    wide = torch.tensor([[1, 30, 5000] * 7]).repeat(6, 1)[:, : len(GEMMA_LABELS)]
    frame = pd.DataFrame({"lens": ["logit"] * 3, "label": ["0_pre", "1_pre", "final_post"],
                          "kl_nats": [40.0, 3.0, 0.0], "top1_agreement": [0.1, 0.5, 1.0]})
    return {
        "target_trajectory rank": lenslib.plotting.target_trajectory(one, stat="rank"),
        "cross_model_trajectories rank": lenslib.plotting.cross_model_trajectories({"tiny": one}, stat="rank"),
        "stat_profile KL": lenslib.plotting.stat_profile({"tiny": plain}, "kl_to_final", log_y=True),
        "recall_trajectories rank": lenslib.plotting.recall_trajectories(fake_run(2, wide), stat="rank"),
        "recall_trajectories rank panels": lenslib.plotting.recall_trajectories(
            fake_run(2, wide), stat="rank", layout="panels"),
        "heldout_figure KL": heldout_figure(frame, "kl_nats"),
    }


def log_axes(fig):
    return [axis for name, axis in fig.layout.to_plotly_json().items()
            if name.startswith("yaxis") and axis.get("type") == "log"]


def test_every_log_axis_writes_powers_of_ten_as_plain_numbers(tiny):
    for name, fig in log_figures(tiny).items():
        axes = log_axes(fig)
        assert axes, f"{name}: no log y axis"
        for axis in axes:
            spec = axis.get("tickformat", "")
            assert spec and not spec.rstrip().endswith("s"), f"{name}: tick format {spec!r} writes SI suffixes"
            # d3's "~" trims trailing zeros, as Python's "g" does by itself
            assert [format(10.0 ** e, spec.replace("~", "")) for e in range(-3, 6)] == PLAIN_POWERS, name


def test_log_ticks_at_powers_of_ten_where_the_values_reach_two_of_them():
    wide = torch.tensor([1, 30, 5000]).repeat(6, 7)[:, : len(GEMMA_LABELS)]  # ranks 1 ... 5000: 1, 10, 100, 1000
    narrow = torch.tensor([2, 5, 8]).repeat(6, 7)[:, : len(GEMMA_LABELS)]  # no power of ten at all
    for layout in ("overlay", "panels"):
        fig = lenslib.plotting.recall_trajectories(fake_run(2, wide), stat="rank", layout=layout)
        assert {axis.get("dtick") for axis in log_axes(fig)} == {1}, layout
        fig = lenslib.plotting.recall_trajectories(fake_run(2, narrow), stat="rank", layout=layout)
        assert {axis.get("dtick") for axis in log_axes(fig)} == {None}, layout  # plotly picks ticks: some show


def test_kl_profile_on_a_log_axis_leaves_out_the_final_zero(tiny):
    result = lenslib.logit_lens(tiny, "abc", positions="last")
    fig = lenslib.plotting.stat_profile({"tiny": result}, "kl_to_final", log_y=True)
    y = list(fig.data[0].y)
    assert float(result.kl_to_final[-1, 0]) == 0.0 and math.isnan(y[-1])
    assert all(v > 0 for v in y[:-1])
    assert "not drawn" in fig.layout.title.subtitle.text  # under the title, not over the x-axis title
    assert not fig.layout.annotations
    linear = lenslib.plotting.stat_profile({"tiny": result}, "kl_to_final")
    assert list(linear.data[0].y)[-1] == 0.0 and linear.layout.title.subtitle.text is None


def test_kl_profile_median_band_over_a_layer_left_out_everywhere_warns_nothing(tiny):
    """Every prompt's final KL is left out on a log axis: that column is drawn empty, not reduced."""
    results = lenslib.logit_lens(tiny, ["abc", "abd", "xyz"], positions="last")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # numpy's "All-NaN slice encountered"
        fig = lenslib.plotting.stat_profile({"tiny": results}, "kl_to_final", reduce="median", log_y=True)
    upper, lower, median = fig.data
    assert all(math.isnan(trace.y[-1]) for trace in fig.data)
    kl = np.stack([r.kl_to_final[:-1, 0].double().numpy() for r in results])
    # numpy's 50th percentile of the same float64 values (three prompts: the middle one, exactly);
    # 1e-12 only leaves room for another interpolation formula's float64 rounding (u = 1.1e-16)
    np.testing.assert_allclose(median.y[:-1], np.median(kl, axis=0), rtol=1e-12)


def test_recall_panels_give_each_relation_its_own_axes(tiny):
    from lenslib.recall.dataset import RecallItem

    items = [RecallItem(relation, "s", prompt, "d") for relation, prompt in
             [("first", "abc"), ("first", "abd"), ("second", "xyc"), ("third", "hello"), ("fourth", "ab"), ("fifth", "a")]]
    run = lenslib.run_recall(tiny, items, progress=False)
    fig = lenslib.plotting.recall_trajectories(run, layout="panels")
    assert [a.text for a in fig.layout.annotations] == [
        "first (n=2)", "second (n=1)", "third (n=1)", "fourth (n=1)", "fifth (n=1)"]
    axes = {trace.yaxis for trace in fig.data}
    assert len(axes) == 5 and len(fig.data) == 5 * 3  # band edges and median per relation
    with pytest.raises(lenslib.InputError, match="layout"):
        lenslib.plotting.recall_trajectories(run, layout="grid")


def panel_label_boxes(fig):
    """Per panel of the bottom row, the pixel extent (left, right) of each x tick label, estimated."""
    width, margin = fig.layout.width, fig.layout.margin
    plot_px = width - margin.l - margin.r
    font = fig.layout.xaxis.tickfont.size
    boxes = []
    for name, axis in fig.layout.to_plotly_json().items():
        if not name.startswith("xaxis") or axis.get("showticklabels") is False or axis.get("visible") is False:
            continue
        (d0, d1), (r0, r1) = axis["domain"], axis["range"]
        to_px = lambda v: margin.l + plot_px * (d0 + (d1 - d0) * (v - r0) / (r1 - r0))
        half = lambda text: CHAR_EM * font * len(text) / 2
        boxes.append([(to_px(v) - half(t), to_px(v) + half(t)) for v, t in zip(axis["tickvals"], axis["ticktext"])])
    return boxes


def test_recall_panel_tick_labels_do_not_overlap():
    """Gemma's 19 layers in 11 panels once ticked 16_pre beside final_post, the two labels printed over each other."""
    fig = lenslib.plotting.recall_trajectories(fake_run(11), layout="panels")
    ticktext = list(fig.layout.xaxis.ticktext)
    assert ticktext[0] == "0_pre" and ticktext[-1] == "final_post" and len(ticktext) >= 3
    assert fig.layout.xaxis.tickangle == 0
    boxes = panel_label_boxes(fig)
    # 11 panels, 4 across: the lowest panel of each column labels the x axis, also the 4th column's,
    # whose lowest panel sits above an empty slot
    assert len(boxes) == 4 and len({panel[0] for panel in boxes}) == 4
    for panel in boxes:
        assert all(right < left for (_, right), (left, _) in zip(panel, panel[1:])), panel
    by_left = sorted({panel[0][0]: panel for panel in boxes}.values())  # one panel per column, left to right
    for this, nxt in zip(by_left, by_left[1:]):
        assert this[-1][1] < nxt[0][0], "the last label of a panel runs into the first of the next"


def test_readable_ticks():
    labels = [f"{i}_pre" for i in range(30)] + ["final_post"]
    wide = readable_ticks(labels, 3000, 10)
    assert wide == list(range(31))  # room for every label
    narrow = readable_ticks(labels, 180, 10)
    # a count, not a tolerance: 6-character labels at 0.6 em of 10 px, plus a gap, fit about 5 times
    # in 180 px (seen: [0, 7, 14, 21, 30])
    assert narrow[0] == 0 and narrow[-1] == 30 and 2 <= len(narrow) < 8
    assert readable_ticks(["only"], 100, 10) == [0]
    with pytest.raises(lenslib.InputError, match="empty"):
        readable_ticks([], 100, 10)
    with pytest.raises(lenslib.InputError, match="positive"):
        readable_ticks(labels, 0, 10)


def test_heldout_kl_figure_leaves_out_the_output_zero():
    import pandas as pd

    frame = pd.DataFrame({"lens": ["logit"] * 3, "label": ["0_pre", "1_pre", "final_post"],
                          "kl_nats": [40.0, 3.0, 0.0], "top1_agreement": [0.1, 0.5, 1.0]})
    kl = heldout_figure(frame, "kl_nats")
    assert list(kl.data[0].y[:2]) == [40.0, 3.0] and math.isnan(kl.data[0].y[2])
    assert kl.layout.yaxis.type == "log" and "not drawn" in kl.layout.title.subtitle.text
    assert not kl.layout.annotations  # nothing placed below the plot, where the x title is
    top1 = heldout_figure(frame, "top1_agreement")
    assert list(top1.data[0].y) == [0.1, 0.5, 1.0] and not top1.layout.title.subtitle.text
