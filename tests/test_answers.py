"""Answers of several tokens: the joint log-probability per layer, against independent references."""

from __future__ import annotations

import pytest
import torch

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


def _check(model, hf_model, prompt, answer, atol):
    result = lenslib.logit_lens(model, prompt, target=answer, positions="last")
    run, ans, where = _teacher_forced(model, prompt, answer)
    assert ans.numel() > 1
    # the model's own teacher-forced log-probability of the answer (through the bridge) ...
    with torch.no_grad():
        own = model(run.view(1, -1))[0].double().log_softmax(-1)[where, ans].sum()
    assert float(result.target_logprob[-1, 0]) == pytest.approx(float(own), abs=atol)
    # ... and, at every layer, the float64 Hugging Face lens summed over the answer's positions
    ref = reference_lens(hf_model, run)
    expected = ref.log_probs[:, where, ans].sum(-1)  # [layer]
    torch.testing.assert_close(result.target_logprob[:, 0].double(), expected, atol=atol, rtol=1e-4)
    torch.testing.assert_close(result.target_prob[:, 0].double(), expected.exp(), atol=1e-5, rtol=1e-3)
    # rank 1 means every token is the layer's top-1 given the ones before it
    top1 = ref.log_probs[:, where].argmax(-1) == ans
    assert ((result.target_rank[:, 0] == 1) == top1.all(-1)).all()
    assert result.positions.tolist() == [len(result.str_tokens) - 1]
    return result


def test_tiny_joint_logprob(tiny, tiny_hf):
    result = _check(tiny, tiny_hf, "abcab", "cab", atol=1e-4)
    assert result.target_tokens == ["cab"] and "joint, 3 tokens" in result.target_label
    # the first answer token's position is the plain lens at the last position
    plain = lenslib.logit_lens(tiny, "abcab", target="c", positions="last")
    torch.testing.assert_close(result.entropy, plain.entropy)
    assert result.top_ids.tolist() == plain.top_ids.tolist()


def test_single_token_answers_are_unchanged_in_a_mixed_list(tiny):
    mixed = lenslib.logit_lens(tiny, ["abc", "abcab"], target=["d", "cab"], positions="last")
    plain = lenslib.logit_lens(tiny, "abc", target="d", positions="last")
    torch.testing.assert_close(mixed[0].target_logprob, plain.target_logprob)
    assert mixed[0].target_rank.tolist() == plain.target_rank.tolist()


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
    result = _check(smollm2, smollm2_hf, "The capital of Argentina is the city of", " Buenos Aires", atol=2e-3)
    assert float(result.target_prob[-1, 0]) > 0.01  # a real answer, not a token soup


def test_joint_results_say_which_forward_ran_and_keep_a_single_tokens_own_probability(tiny):
    joint = lenslib.logit_lens(tiny, "ab", target=" cd", positions="last")
    assert joint.forward_path == "sdpa"
    bridge = lenslib.logit_lens(tiny, "ab", target=" cd", positions="last", forward="bridge")
    assert bridge.forward_path == "bridge"
    from lenslib.lens.answers import joint_lens

    single = joint_lens(tiny, [tiny.to_tokens("ab")[0]], [[int(tiny.to_single_token("c"))]])[0]
    plain = lenslib.logit_lens(tiny, "ab", target="c", positions="last")
    assert torch.equal(single.target_prob, plain.target_prob)
