"""Log axes that read in a static image: powers of ten only, and no line to KL = 0."""

from __future__ import annotations

import math

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
