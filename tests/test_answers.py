"""Answers of several tokens: the joint log-probability per layer, against independent references."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from numerics import (
    SUBNORMAL32, U32, assert_ranks_within, assert_top_ids_agree, assert_within, decoded, fraction,
    lens_tolerances, logit_shift, sum_error, tile_columns,
)

import lenslib
from lenslib.core.tokens import answer_ids
from lenslib.lens.answers import joint_lens
from tests.hf_reference import reference_lens


def _teacher_forced(model, prompt, answer):
    prompt_ids = model.to_tokens(prompt)[0]
    ans = model.to_tokens(answer, prepend_bos=False)[0]
    run = torch.cat([prompt_ids, ans[:-1]])
    n = prompt_ids.numel()
    return run, ans, torch.arange(n - 1, n - 1 + ans.numel())


def _joint_rows(model, runs, chosen):
    """The rows the joint lens decoded (its runs as one batch), per run ``[layer, n, d_model]``."""
    return decoded(model, [SimpleNamespace(input_ids=r, positions=c) for r, c in zip(runs, chosen)], "sdpa")


def _check(model, hf_model, prompt, answer):
    """The joint log-probability against the model's own and a Hugging Face float64 lens. Bounds
    from tests/numerics.py: each of the answer's n log-probabilities within ``2 delta`` of the
    reference's (step 3) plus ``eps`` for the lens's sums (step 4); their sum within the sum of
    those; the stored float32 sum one rounding more."""
    result = lenslib.logit_lens(model, prompt, target=answer, positions="last")
    run, ans, where = _teacher_forced(model, prompt, answer)
    assert ans.numel() > 1
    rows = _joint_rows(model, [run], [where])[0]  # [layer, n, d_model]
    eps = sum_error(tile_columns(model))
    # the model's own teacher-forced log-probability of the answer (through the bridge) ...
    with torch.no_grad():
        logits, cache = model.run_with_cache(run.view(1, -1), names_filter="unembed.hook_in")
    own = float(logits[0].double().log_softmax(-1)[where, ans].sum())
    delta = logit_shift(rows[-1], cache["unembed.hook_in"][0, where], model.W_U)  # [n]
    bound = float((2 * delta + eps).sum()) + U32 * abs(own)
    assert_within(result.target_logprob[-1, 0], torch.tensor(own), bound, "the model's own")
    # ... and, at every layer, the float64 Hugging Face lens summed over the answer's positions
    ref = reference_lens(hf_model, run)
    expected = ref.log_probs[:, where, ans].sum(-1)  # [layer]
    delta = logit_shift(rows, ref.rows[:, where], model.W_U)  # [layer, n]
    bound = (2 * delta + eps).sum(-1) + U32 * expected.abs()
    assert_within(result.target_logprob[:, 0], expected, bound, "joint log-probability")
    larger = torch.maximum(result.target_prob[:, 0].double(), expected.exp())
    assert_within(result.target_prob[:, 0], expected.exp(), larger * torch.expm1(bound) + 2 * SUBNORMAL32, "joint probability")
    # rank 1 means every token is the layer's top-1 given the ones before it; checked at the
    # layers where no answer token is within a near-tie window of its best rival (step 5)
    logp = ref.log_probs[:, where]  # [layer, n, vocab]
    own_lp = logp.gather(-1, ans.view(1, -1, 1).expand(logp.shape[0], -1, 1)).squeeze(-1)
    rival = logp.scatter(-1, ans.view(1, -1, 1).expand(logp.shape[0], -1, 1), -torch.inf).amax(-1)
    z_t = (ref.rows[:, where].double() * model.W_U.T[ans].double()).sum(-1)
    decided = ((own_lp - rival).abs() > 2 * delta + 2 * U32 * z_t.abs()).all(-1)  # [layer]
    top1 = (own_lp > rival).all(-1)
    assert decided.float().mean() > 0.5  # the check is made at most layers
    assert ((result.target_rank[:, 0] == 1) == top1)[decided].all()
    assert result.positions.tolist() == [len(result.str_tokens) - 1]
    return result


def test_tiny_joint_logprob(tiny, tiny_hf):
    result = _check(tiny, tiny_hf, "abcab", "cab")
    assert result.target_tokens == ["cab"] and "joint, 3 tokens" in result.target_label
    # the first answer token's position is the plain lens at the last position, run on fewer
    # tokens (so rounded apart): tests/numerics.py's bounds on the two runs' rows
    plain = lenslib.logit_lens(tiny, "abcab", target="c", positions="last")
    run, _, where = _teacher_forced(tiny, "abcab", "cab")
    delta = logit_shift(_joint_rows(tiny, [run], [where])[0][:, :1], decoded(tiny, [plain], "sdpa")[0], tiny.W_U)
    tol = lens_tolerances(delta, result, plain, columns=tile_columns(tiny))
    assert_within(result.entropy, plain.entropy, tol["entropy"], "entropy")
    separated = assert_top_ids_agree(result.top_ids, plain.top_ids, plain.top_probs, delta)
    assert fraction(separated[..., 0]) > 0.5  # most top-1s are checked, not waived as near-ties


def test_single_token_answers_are_unchanged_in_a_mixed_list(tiny):
    mixed = lenslib.logit_lens(tiny, ["abc", "abcab"], target=["d", "cab"], positions="last")
    plain = lenslib.logit_lens(tiny, "abc", target="d", positions="last")
    # the mixed list runs as one padded batch of teacher-forced runs: rows round apart
    long_run, _, long_where = _teacher_forced(tiny, "abcab", "cab")
    short = tiny.to_tokens("abc")[0]
    rows = _joint_rows(tiny, [short, long_run], [torch.tensor([short.numel() - 1]), long_where])[0]
    plain_rows = decoded(tiny, [plain], "sdpa")[0]
    delta = logit_shift(rows, plain_rows, tiny.W_U)
    tol = lens_tolerances(delta, mixed[0], plain, columns=tile_columns(tiny))
    assert_within(mixed[0].target_logprob, plain.target_logprob, tol["logprob"], "target_logprob")
    assert_ranks_within(mixed[0].target_rank, plain.target_rank, plain_rows, tiny.W_U, None, plain.target_ids, delta)


def test_bad_multi_token_use(tiny):
    with pytest.raises(ValueError, match="positions='last'"):
        lenslib.logit_lens(tiny, "abc", target="cd")  # all positions
    with pytest.raises(ValueError, match="give every prompt its answer"):
        lenslib.logit_lens(tiny, ["abc", "abd"], target=[None, "cd"], positions="last")
    with pytest.raises(ValueError, match="empty"):
        answer_ids(tiny, "")
    with pytest.raises(ValueError, match="no tokens"):
        joint_lens(tiny, [tiny.to_tokens("abc")[0]], [[]])


@pytest.mark.real_model
def test_smollm2_buenos_aires(smollm2, smollm2_hf):
    result = _check(smollm2, smollm2_hf, "The capital of Argentina is the city of", " Buenos Aires")
    # a real answer, not a token soup: a statement about the model, not a tolerance (0.36 seen;
    # two uniform guesses over SmolLM2's 49,152 tokens would give 4e-10)
    assert float(result.target_prob[-1, 0]) > 0.01


def test_joint_results_say_which_forward_ran_and_keep_a_single_tokens_own_probability(tiny):
    joint = lenslib.logit_lens(tiny, "ab", target=" cd", positions="last")
    assert joint.forward_path == "sdpa"
    bridge = lenslib.logit_lens(tiny, "ab", target=" cd", positions="last", forward="bridge")
    assert bridge.forward_path == "bridge"
    from lenslib.lens.answers import joint_lens

    single = joint_lens(tiny, [tiny.to_tokens("ab")[0]], [[int(tiny.to_single_token("c"))]])[0]
    plain = lenslib.logit_lens(tiny, "ab", target="c", positions="last")
    assert torch.equal(single.target_prob, plain.target_prob)  # one computation: bit for bit
