"""Log axes that read in a static image: powers of ten only, and no line to KL = 0."""

from __future__ import annotations

import math

import pytest

import lenslib


def test_rank_axis_ticks_only_powers_of_ten(tiny):
    result = lenslib.logit_lens(tiny, "abc", target="d", positions="last")
    fig = lenslib.plotting.target_trajectory(result, stat="rank")
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.dtick == 1


def test_kl_profile_on_a_log_axis_leaves_out_the_final_zero(tiny):
    result = lenslib.logit_lens(tiny, "abc", positions="last")
    fig = lenslib.plotting.stat_profile({"tiny": result}, "kl_to_final", log_y=True)
    y = list(fig.data[0].y)
    assert float(result.kl_to_final[-1, 0]) == 0.0 and math.isnan(y[-1])
    assert all(v > 0 for v in y[:-1])
    assert "not drawn" in fig.layout.annotations[0].text
    linear = lenslib.plotting.stat_profile({"tiny": result}, "kl_to_final")
    assert list(linear.data[0].y)[-1] == 0.0 and not linear.layout.annotations


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


def test_heldout_kl_figure_leaves_out_the_output_zero():
    import pandas as pd

    frame = pd.DataFrame({"lens": ["logit"] * 3, "label": ["0_pre", "1_pre", "final_post"],
                          "kl_nats": [40.0, 3.0, 0.0], "top1_agreement": [0.1, 0.5, 1.0]})
    from lenslib.plotting.tuned import heldout_figure

    kl = heldout_figure(frame, "kl_nats")
    assert list(kl.data[0].y[:2]) == [40.0, 3.0] and math.isnan(kl.data[0].y[2])
    assert kl.layout.yaxis.type == "log" and "not drawn" in kl.layout.annotations[0].text
    top1 = heldout_figure(frame, "top1_agreement")
    assert list(top1.data[0].y) == [0.1, 0.5, 1.0] and not top1.layout.annotations
