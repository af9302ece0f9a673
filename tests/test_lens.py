"""logit_lens on the tiny random model: against an independent reference, properties, bad input."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from hf_reference import final_norm, reference_lens
from numerics import (
    EXP_ULPS, U32, UBF16, assert_lens_agrees, assert_top_ids_agree, assert_within, decoded, fraction,
    lens_tolerances, logit_shift, sum_error, tile_columns, weights_shift,
)

import lenslib

PROMPT = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def result(tiny):
    return lenslib.logit_lens(tiny, PROMPT, k=5)


@pytest.fixture(scope="module")
def reference(tiny_hf, result):
    return reference_lens(tiny_hf, result.input_ids)


def test_shapes_and_labels(tiny, result):
    n_tokens = len(PROMPT) + 1  # one token per character, plus BOS
    assert result.input_ids.shape == (n_tokens,)
    assert result.str_tokens[0] == "<bos>" and "".join(result.str_tokens[1:]) == PROMPT
    assert result.layer_labels == ["0_pre", "1_pre", "final_post"]
    assert result.top_ids.shape == result.top_probs.shape == (3, n_tokens, 5)
    for name in ("entropy", "kl_to_final", "target_prob", "target_logprob", "target_rank"):
        assert getattr(result, name).shape == (3, n_tokens), name
    assert len(result.top_tokens) == 3 and len(result.top_tokens[0]) == n_tokens
    assert result.top_tokens[1][4] == [tiny.tokenizer.decode([i]) for i in result.top_ids[1, 4]]


@pytest.fixture(scope="module")
def bounds(tiny, result, reference):
    """The lens against the reference: both decode float32 rows of their own forward (SDPA and
    Hugging Face's eager one) with float32 logits; the reference's statistics are float64."""
    rows = decoded(tiny, [result], "sdpa")[0]
    delta = logit_shift(rows, reference.rows, tiny.W_U)
    return rows, delta, lens_tolerances(delta, result, reference, columns=tile_columns(tiny), tiled=1)


def test_matches_independent_reference(tiny, result, reference, bounds):
    rows, delta, _ = bounds
    # every statistic within tests/numerics.py's derived bounds; top ids and ranks up to near-ties
    assert_lens_agrees(tiny, result, reference.as_result(result.target_ids, k=5), rows, reference.rows,
                       tiled=1)


def test_last_layer_is_the_models_own_prediction(result, reference, bounds):
    _, _, tol = bounds  # the model's own logits are the reference's last layer (same rows and head)
    own = reference.model_logits.log_softmax(-1).gather(-1, result.top_ids[-1].long()).exp()
    assert_within(result.top_probs[-1], own, own * tol["prob_rtol"][-1].unsqueeze(-1), "final layer")


@pytest.mark.parametrize("mistake", ["no final norm", "final norm twice", "last layer's scale for all"])
def test_reference_catches_final_norm_mistakes(tiny_hf, result, reference, bounds, mistake):
    """The comparison above would fail if the lens got the final norm wrong in any of these ways."""
    out = tiny_hf(result.input_ids.view(1, -1), output_hidden_states=True)
    hidden = torch.stack([h[0] for h in out.hidden_states[:-1]])  # pre-norm streams
    norm = final_norm(tiny_hf)
    with torch.no_grad():
        if mistake == "no final norm":
            streams = hidden
        elif mistake == "final norm twice":
            streams = norm(norm(hidden))
        else:  # one cached scale (the final layer's) reused for every layer
            rms = lambda x: x.pow(2).mean(-1, keepdim=True).add(norm.variance_epsilon).rsqrt()  # noqa: E731
            streams = hidden * rms(hidden[-1]) * norm.weight
        wrong = tiny_hf.lm_head(streams).double().log_softmax(-1)
    wrong_entropy = -(wrong.exp() * wrong).sum(-1)
    beyond = (wrong_entropy[:-1] - reference.entropy[:-1]).abs() > bounds[2]["entropy"][:-1]
    assert beyond.float().mean() > 0.5  # most (more than half) cells of the mistaken lens fail the bound above


def test_properties(tiny, result, bounds):
    assert (result.kl_to_final >= 0).all()
    assert (result.kl_to_final[-1] == 0).all()
    # distributions really differ across layers: KL beyond what rounding could make of zero
    assert (result.kl_to_final[:-1] > bounds[2]["kl_to_final"][:-1]).any()
    # the entropy of any distribution over 64 tokens is <= log 64; the lens's sums can add
    # tests/numerics.py's step-4 error eps (1 + 2H), and storing it in float32 one rounding
    H_max = math.log(64)
    assert (result.entropy >= 0).all()
    assert (result.entropy <= H_max + sum_error(64) * (1 + 2 * H_max) + U32 * H_max).all()
    # non-uniform, so the checks have teeth: a threshold, not a tolerance (the minimum is 0.18
    # nats here, far below 0.8 ln 64 = 3.3; a lens stuck near uniform would sit near ln 64 = 4.16)
    assert result.entropy.min() < 0.8 * math.log(64)
    has = result.target_ids >= 0
    is_top1 = result.top_ids[..., 0] == result.target_ids.view(1, -1)
    assert torch.equal(result.target_rank[:, has] == 1, is_top1[:, has])
    assert (result.top_probs[..., :-1] >= result.top_probs[..., 1:]).all()
    # target_prob is exp in float64, stored: 1 rounding; exp of the stored float32 log-prob: its
    # rounding u |log p| through exp, exp's own EXP_ULPS and 1 more when stored
    logprob = result.target_logprob[:, has]
    prob = result.target_prob[:, has]
    assert_within(prob, logprob.exp(), prob.double() * U32 * (logprob.double().abs() + EXP_ULPS + 2), "exp")


def test_default_target_is_next_token(result):
    assert torch.equal(result.target_ids[:-1], result.input_ids[1:])
    assert result.target_ids[-1] == -1
    assert torch.isnan(result.target_prob[:, -1]).all() and (result.target_rank[:, -1] == 0).all()


def test_batched_equals_unbatched(tiny):
    prompts = ["Hello there", "a", "The cat sat on the mat, quietly."]
    batched = lenslib.logit_lens(tiny, prompts, k=3, batch_size=2)
    assert isinstance(batched, list) and len(batched) == 3
    rows = decoded(tiny, batched[:2], "sdpa") + decoded(tiny, batched[2:], "sdpa")  # as batched
    for prompt, got, got_rows in zip(prompts, batched, rows):
        alone = lenslib.logit_lens(tiny, prompt, k=3)
        assert torch.equal(got.input_ids, alone.input_ids)
        # a padded batch rounds differently: within tests/numerics.py's bounds, ties aside
        assert_lens_agrees(tiny, got, alone, got_rows, decoded(tiny, [alone], "sdpa")[0])


def test_chunking_does_not_change_results(tiny, result):
    small = lenslib.logit_lens(tiny, PROMPT, k=5, chunk_bytes=1)  # one position per block
    # the same rows; other tiles block the matmul and the sums differently (numerics steps 1-5)
    assert_lens_agrees(tiny, small, result, decoded(tiny, [result], "sdpa")[0], None)


@pytest.mark.parametrize(
    "positions, expected",
    [("last", [44]), (-1, [44]), (3, [3]), (slice(2, 5), [2, 3, 4]), ([0, -2], [0, 43]), (None, list(range(45)))],
)
def test_positions(tiny, result, positions, expected):
    got = lenslib.logit_lens(tiny, PROMPT, k=5, positions=positions)
    assert got.positions.tolist() == expected
    # one position caches a slice of the stream: its rows may round apart from the full run's
    rows = decoded(tiny, [got], "sdpa")[0]
    delta = logit_shift(rows, decoded(tiny, [result], "sdpa")[0][:, expected], tiny.W_U)
    want = SimpleNamespace(entropy=result.entropy[:, expected], kl_to_final=result.kl_to_final[:, expected])
    tol = lens_tolerances(delta, got, want, columns=tile_columns(tiny))
    assert_within(got.entropy, want.entropy, tol["entropy"], "entropy")


def test_fixed_target_string_and_id(tiny):
    by_string = lenslib.logit_lens(tiny, "abc", target="z")
    z_id = tiny.tokenizer.convert_tokens_to_ids("z")
    by_id = lenslib.logit_lens(tiny, "abc", target=z_id)
    assert (by_string.target_ids == z_id).all() and by_string.target_tokens == ["z"] * 4
    assert torch.equal(by_string.target_prob, by_id.target_prob)  # the same computation, bit for bit
    assert (by_string.target_rank >= 1).all()


def test_multi_token_target_is_joint_at_the_last_position(tiny):
    # the full check against references is in tests/test_answers.py
    with pytest.raises(ValueError, match="positions='last'"):
        lenslib.logit_lens(tiny, "abc", target="xy")
    got = lenslib.logit_lens(tiny, "abc", target="xy", positions="last")
    assert (got.target_ids == tiny.tokenizer.convert_tokens_to_ids("x")).all()
    assert got.target_tokens == ["xy"] and got.target_logprob.shape == (3, 1)


def test_per_prompt_targets(tiny):
    got = lenslib.logit_lens(tiny, ["ab", "cd"], target=["c", "e"], positions="last")
    assert [r.target_tokens for r in got] == [["c"], ["e"]]


def test_output_transform_identity_takes_the_fast_path_and_softcap_is_applied(tiny, monkeypatch):
    from lenslib.core.bridge import output_transform

    assert output_transform(tiny) is None  # TransformerLens's -1.0 means "no soft-cap"
    plain = lenslib.logit_lens(tiny, "abc")
    monkeypatch.setattr(tiny.adapter.cfg, "output_logits_soft_cap", 1.0)
    assert output_transform(tiny) is not None
    capped = lenslib.logit_lens(tiny, "abc")
    # a cap of 1 squeezes every logit into (-1, 1): distributions flatten
    assert (capped.entropy > plain.entropy).all()
    H_max = math.log(64)  # plus rounding, as in test_properties
    assert capped.entropy.max() <= H_max + sum_error(64) * (1 + 2 * H_max) + U32 * H_max


@pytest.mark.parametrize("forward", ["bridge", "sdpa"])
def test_bfloat16_model_gives_float32_statistics_close_to_fp32(tiny, result, forward):
    from lenslib.models.random_weights import tiny_hf_model, tiny_model

    bf16 = tiny_model(dtype=torch.bfloat16)
    assert bf16.W_U.dtype == torch.bfloat16
    got = lenslib.logit_lens(bf16, PROMPT, k=5, forward=forward)
    assert got.forward_path == forward
    assert got.entropy.dtype == torch.float32 and got.top_probs.dtype == torch.float32
    assert (got.kl_to_final[-1] == 0).all() and (got.kl_to_final >= 0).all()
    # the last layer is the bf16 model's own prediction, computed the same way: the bridge's
    # eager forward, or Hugging Face's own model with SDPA attention (bf16 rounds them apart)
    with torch.no_grad():
        if forward == "bridge":
            logits, cache = bf16.run_with_cache(got.input_ids.view(1, -1))
            own_rows = cache["unembed.hook_in"][0]
        else:
            hf = tiny_hf_model(seed=0)[0].to(torch.bfloat16)
            hf.set_attn_implementation("sdpa")
            out = hf(got.input_ids.view(1, -1), output_hidden_states=True)
            logits, own_rows = out.logits, out.hidden_states[-1][0]  # the last one is normed
    own = logits[0].float().log_softmax(-1)
    # tests/numerics.py steps 1-5 for bf16 logits (float32 accumulation, one bf16 rounding on
    # output), with the measured difference of the two final rows; own's float32 softmax rounds
    # as the lens's sums do (tiled=2)
    rows = decoded(bf16, [got], forward)[0]
    delta = weights_shift(rows[-1], own_rows, bf16.W_U, bf16.W_U, UBF16, UBF16)
    own_top = own.topk(5, dim=-1)
    separated = assert_top_ids_agree(got.top_ids[-1:], own_top.indices[None], own_top.values.exp()[None], delta[None])
    assert fraction(separated[..., 0]) > 0.5  # most top-1s are checked, not waived as near-ties
    rtol = torch.expm1(2 * delta + 2 * sum_error(64)) + 2 * U32
    own_probs = own.gather(-1, got.top_ids[-1]).exp()
    larger = torch.maximum(got.top_probs[-1], own_probs).double()
    assert_within(got.top_probs[-1], own_probs, larger * rtol.unsqueeze(-1), "the model's own")
    # against the float32 model: weights rounded to bf16 (at most UBF16 relative each) and a bf16
    # forward; the logits differ by ||h_bf - h_32|| ||w_32|| + ||h_bf|| max ||w_bf - w_32||
    # plus each side's rounding, and the statistics as numerics' step 3 says
    delta = weights_shift(rows, decoded(tiny, [result], "sdpa")[0], bf16.W_U, tiny.W_U, stored_a=UBF16)
    tol = lens_tolerances(delta, got, result, columns=64)
    assert_within(got.entropy, result.entropy, tol["entropy"], "bf16 entropy")
    separated = assert_top_ids_agree(got.top_ids, result.top_ids, result.top_probs, delta)
    assert fraction(separated[..., 0]) > 0.5  # as above


def test_incl_mid_adds_attention_outputs(tiny):
    got = lenslib.logit_lens(tiny, "abc", incl_mid=True)
    assert got.layer_labels == ["0_pre", "0_mid", "1_pre", "1_mid", "final_post"]
    assert (got.kl_to_final[-1] == 0).all()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(prompt=""), ValueError, "empty"),
        (dict(prompt=[]), ValueError, "non-empty list"),
        (dict(prompt=["ok", 3]), ValueError, "not a string"),
        (dict(prompt="a" * 200), ValueError, "context is 128"),
        (dict(prompt="abc", positions=4), IndexError, "outside the prompt"),
        (dict(prompt="abc", positions=-5), IndexError, "outside the prompt"),
        (dict(prompt="abc", positions=slice(10, 20)), ValueError, "selects no position"),
        (dict(prompt="abc", positions="first"), ValueError, "'last'"),
        (dict(prompt="abc", k=0), ValueError, r"k must be an int in \[1, 64\]"),
        (dict(prompt="abc", k=65), ValueError, r"k must be an int in \[1, 64\]"),
        (dict(prompt="abc", target=""), ValueError, "empty string"),
        (dict(prompt="abc", target=1.5), ValueError, "target must be"),
        (dict(prompt="abc", target=64), ValueError, "outside the vocabulary"),
        (dict(prompt="abc", target=["a", "b"]), ValueError, "list of targets"),
    ],
)
def test_bad_input_says_what_to_do(tiny, kwargs, error, match):
    prompt = kwargs.pop("prompt")
    with pytest.raises(error, match=match):
        lenslib.logit_lens(tiny, prompt, **kwargs)


def test_to_frame_and_str(result):
    frame = result.to_frame()
    assert len(frame) == 3 * 45 * 5
    row = frame[(frame.layer == 1) & (frame.position == 7) & (frame.k_rank == 2)].iloc[0]
    assert row.token_id == int(result.top_ids[1, 7, 1])
    assert row.prob == float(result.top_probs[1, 7, 1])  # the same float32, widened: exact
    assert row.entropy == float(result.entropy[1, 7])
    assert row.input_token == result.str_tokens[7]
    text = str(result)
    assert "final_post" in text and "position 44" in text and len(text.splitlines()) == 3 + 3


@pytest.mark.parametrize("enabled_before", [True, False])
def test_collection_is_paused_while_token_lists_are_built_then_restored(tiny, monkeypatch, enabled_before):
    import gc

    import lenslib.lens.batch as lens_module

    states = []
    real = lens_module.LensResult

    def spy(**fields):
        states.append(gc.isenabled())
        return real(**fields)

    monkeypatch.setattr(lens_module, "LensResult", spy)
    was = gc.isenabled()
    try:
        gc.enable() if enabled_before else gc.disable()
        lenslib.logit_lens(tiny, ["one prompt", "and another"], k=3)
        assert gc.isenabled() is enabled_before
    finally:
        gc.enable() if was else gc.disable()
    assert states == [False, False]


def test_all_positions_lens_decodes_the_stream_in_place(tiny, monkeypatch):
    """All positions, one prompt: the stack goes to lens_stats as a view, not a copy."""
    import lenslib.lens.batch as lens_module

    seen = {}
    real = lens_module.lens_stats

    def spy(rows, *args, **kwargs):
        seen["rows"] = rows
        return real(rows, *args, **kwargs)

    monkeypatch.setattr(lens_module, "lens_stats", spy)
    got = lenslib.logit_lens(tiny, PROMPT, k=3)
    assert seen["rows"]._base is not None  # a view of accumulated_resid's stack
    lenslib.logit_lens(tiny, PROMPT, k=3, positions=[0, 2])
    assert seen["rows"].shape[1] == 2 and seen["rows"]._base is None
    assert got.entropy.shape[1] == len(got.input_ids)
