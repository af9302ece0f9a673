"""Answers of several tokens: the lens of their joint log-probability, layer by layer.

An answer ``a = (a_1, ..., a_n)`` after a prompt ``p`` has the joint log-probability
``log P(a | p) = sum_i log P(a_i | p, a_1 .. a_{i-1})``. Per layer, the prompt's tokens followed
by the answer's tokens but the last are run once (teacher forcing), each of the ``n`` positions
that predicts an answer token is decoded through the lens, and the log-probabilities of the
answer's tokens there are summed. At the final layer this is the model's own teacher-forced
log-probability of the answer. The answer is tokenized on its own (no BOS) and appended to the
prompt's tokens, so the answer is exactly the pieces a user sees from ``to_str_tokens``.

>>> import lenslib
>>> model = lenslib.load_model("tiny-llama")
>>> result = lenslib.logit_lens(model, "ab", target="cd", positions="last")
>>> result.positions.tolist(), result.target_tokens    # the prompt's last position
([2], ['cd'])
>>> result.target_logprob.shape                       # [layer, 1]: joint log-prob, nats
torch.Size([3, 1])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor

from lenslib.core.stats import DEFAULT_CHUNK_BYTES
from lenslib.core.tokens import answer_ids, check_length, resolve_positions
from lenslib.errors import InputError
from lenslib.lens.batch import lens_batch
from lenslib.lens.result import LensResult

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def lens_multi_token(model, tokens: Sequence[Tensor], targets: Sequence, positions, **kwargs) -> list[LensResult]:
    """:func:`lenslib.logit_lens`'s path when a target is a string of several tokens.

    The joint log-probability is defined at the prompt's last position only, so ``positions``
    must select it alone (``"last"``, ``-1``, or its index); every prompt needs a string or id
    target (``None``, the next input token, has no answer to continue).
    """
    for ids in tokens:
        chosen = resolve_positions(positions, ids.numel()).tolist()
        if chosen != [ids.numel() - 1]:
            raise InputError(
                "a target of several tokens is tracked as the joint log-probability of the whole "
                "answer after the prompt, at the prompt's last position only; pass "
                "positions='last' (or a single-token target to track it at every position)."
            )
    answers, labels = [], []
    for target in targets:
        if target is None:
            raise InputError(
                "with a list of targets of which some have several tokens, give every prompt its "
                "answer (a string or token id); None (the next input token) has no answer."
            )
        if isinstance(target, bool) or not isinstance(target, (str, int)):
            raise InputError(f"target must be a string such as ' Paris' or a token id; got {target!r}")
        answers.append(answer_ids(model, target) if isinstance(target, str) else [target])
        labels.append(target if isinstance(target, str) else None)
    return joint_lens(model, tokens, answers, labels=labels, **kwargs)


@torch.no_grad()
def joint_lens(
    model: "TransformerBridge",
    tokens: Sequence[Tensor],
    answers: Sequence[Sequence[int]],
    *,
    labels: Sequence[str] | None = None,
    k: int = 5,
    incl_mid: bool = False,
    batch_size: int = 16,
    chunk_bytes: int | None = None,
    forward: str = "auto",
    lens=None,
) -> list[LensResult]:
    """Lens each prompt at its last position, tracking the joint log-probability of its answer.

    Args:
        model: a ``TransformerBridge``.
        tokens: each prompt's tokens, BOS included (``[n_tokens]`` each).
        answers: each prompt's answer as token ids (one or more).
        labels: the answer strings, for ``target_tokens`` / ``target_label``.
        k, incl_mid, batch_size, chunk_bytes, forward, lens: as in :func:`lenslib.logit_lens`.

    Returns:
        One :class:`LensResult` per prompt with a single position, the prompt's last:
        ``top_*``, ``entropy`` and ``kl_to_final`` are that position's (the prediction of the
        answer's first token); ``target_logprob`` ``[layer, 1]`` is the joint log-probability
        of the whole answer (nats), ``target_prob`` its exponential, ``target_rank`` the worst
        rank of the answer's tokens at their positions (1 = every token is the layer's top-1
        given the ones before, i.e. greedy decoding through that layer gives the answer);
        ``target_ids`` holds the answer's first token.
    """
    chunk_bytes = DEFAULT_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    n_ctx = int(model.cfg.n_ctx)
    runs, chosen, targets = [], [], []
    for ids, answer in zip(tokens, answers):
        answer = torch.as_tensor(list(answer), dtype=torch.long)
        if answer.numel() == 0:
            raise InputError("an answer has no tokens: give at least one")
        run = torch.cat([ids, answer[:-1]])
        check_length(run.numel(), n_ctx, "the prompt followed by its answer")
        runs.append(run)
        chosen.append(torch.arange(ids.numel() - 1, run.numel()))
        targets.append(answer)
    raw = []
    for start in range(0, len(runs), batch_size):
        stop = start + batch_size
        raw += lens_batch(model, runs[start:stop], chosen[start:stop], targets[start:stop],
                           [None] * len(runs[start:stop]), k=k, incl_mid=incl_mid, chunk_bytes=chunk_bytes,
                           forward=forward, lens=lens)
    labels = list(labels) if labels is not None else [None] * len(runs)
    return [_joint(r, ids, label) for r, ids, label in zip(raw, tokens, labels)]


def _joint(result: LensResult, prompt_ids: Tensor, label) -> LensResult:
    """Fold an ``[layer, answer position]`` result into the joint ``[layer, 1]`` one."""
    if label is None:
        label = "".join(result.str_tokens[int(p) + 1] for p in result.positions[:-1]) + "…"
    logprob = result.target_logprob.double().sum(dim=1, keepdim=True)
    first = slice(0, 1)
    # One token: keep the lens's own probability (exp(log p) can differ from p in the last bit).
    prob = result.target_prob[:, first] if result.positions.numel() == 1 else logprob.exp().float()
    return LensResult(
        input_ids=prompt_ids,
        str_tokens=result.str_tokens[: prompt_ids.numel()],
        positions=result.positions[first],
        layer_labels=result.layer_labels,
        top_ids=result.top_ids[:, first],
        top_probs=result.top_probs[:, first],
        top_tokens=[layer[:1] for layer in result.top_tokens],
        entropy=result.entropy[:, first],
        kl_to_final=result.kl_to_final[:, first],
        target_ids=result.target_ids[first],
        target_prob=prob,
        target_logprob=logprob.float(),
        target_rank=result.target_rank.max(dim=1, keepdim=True).values,
        target_tokens=[label],
        target_label=f"{label!r} (joint, {result.positions.numel()} tokens)",
        model_name=result.model_name,
        forward_path=result.forward_path,
    )
