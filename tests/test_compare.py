"""lenslib.compare: several models on one prompt, by relative depth."""

from __future__ import annotations

import pytest
import torch

import lenslib


@pytest.fixture(scope="module")
def other_tiny():
    from lenslib.models.random_weights import tiny_model

    return tiny_model(seed=1)  # same shapes and tokenizer, other weights: another "model"


def test_each_model_tracks_its_own_final_top1_by_default(tiny, other_tiny):
    comparison = lenslib.compare({"a": tiny, "b": other_tiny}, "Hello")
    assert comparison.model_names == ["a", "b"]
    for name, model in (("a", tiny), ("b", other_tiny)):
        alone = lenslib.logit_lens(model, "Hello", positions="last")
        result = comparison.results[name]
        own_top1 = int(alone.top_ids[-1, 0, 0])
        assert int(result.target_ids[0]) == own_top1
        assert int(result.target_rank[-1, 0]) == 1  # the final layer's top-1 is its own prediction
        assert torch.equal(result.entropy, alone.entropy)


def test_a_given_target_is_tracked_in_every_model(tiny, other_tiny):
    comparison = lenslib.compare({"a": tiny, "b": other_tiny}, "Hello", target="o")
    for name, model in (("a", tiny), ("b", other_tiny)):
        alone = lenslib.logit_lens(model, "Hello", positions="last", target="o")
        assert torch.equal(comparison.results[name].target_prob, alone.target_prob)


def test_frame_lines_models_up_by_relative_depth(tiny, other_tiny):
    frame = lenslib.compare({"a": tiny, "b": other_tiny}, "Hi", target="o").to_frame()
    assert len(frame) == 2 * 3  # two models x (embeddings + 2 blocks)
    assert frame[frame.model == "a"].relative_depth.tolist() == [0.0, 0.5, 1.0]
    # exact: the lens clamps KL at 0 (lenslib.core.tile_update.RunningStats.finish), no rounding below
    assert (frame.target_rank >= 1).all() and (frame.kl_to_final >= 0).all()
    fig = lenslib.plotting.cross_model_trajectories(lenslib.compare({"a": tiny, "b": other_tiny}, "Hi").results)
    assert [list(trace.x) for trace in fig.data] == [[0.0, 0.5, 1.0]] * 2
    assert "tracking 'o'" in str(lenslib.compare({"a": tiny, "b": other_tiny}, "Hi", target="o"))


@pytest.mark.parametrize("models, target, message", [
    ("one", None, "at least two models"),
    ("same", None, "distinct names"),
    ("two", 5, "by its text"),
])
def test_bad_input_says_what_to_do(tiny, other_tiny, models, target, message):
    given = {"one": {"a": tiny}, "same": [tiny, tiny], "two": {"a": tiny, "b": other_tiny}}[models]
    with pytest.raises(lenslib.InputError, match=message):
        lenslib.compare(given, "Hi", target=target)
