"""The logit lens: decode every layer's residual stream through the final norm and unembedding.

>>> import lenslib
>>> model = lenslib.load_model("tiny-llama")
>>> result = lenslib.logit_lens(model, "abc", k=2, positions="last")
>>> result.layer_labels            # embeddings, input of block 1, output of the last block
['0_pre', '1_pre', 'final_post']
>>> result.entropy.shape           # [layer, pos]: one position chosen
torch.Size([3, 1])
>>> float(result.kl_to_final[-1, 0])   # the final layer is the model's own prediction
0.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence, Union

import torch
from torch import Tensor

from lenslib.core.forward import FORWARD_CHOICES
from lenslib.core.stats import DEFAULT_CHUNK_BYTES
from lenslib.core.tokens import (
    Positions,
    Token,
    check_prompts,
    is_multi_token,
    resolve_positions,
    token_id,
    tokenize,
)
from lenslib.core.translator import Translator
from lenslib.errors import InputError
from lenslib.lens.answers import lens_multi_token
from lenslib.lens.batch import lens_batch
from lenslib.lens.result import LensResult

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

Target = Union[None, Token]


def logit_lens(
    model: "TransformerBridge",
    prompt: Union[str, Sequence[str]],
    *,
    k: int = 5,
    target: Union[Target, Sequence[Target]] = None,
    positions: Positions = None,
    incl_mid: bool = False,
    prepend_bos: Optional[bool] = None,
    batch_size: int = 16,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    forward: str = "auto",
    lens: Optional[Translator] = None,
) -> Union[LensResult, list[LensResult]]:
    """Run the model once and decode every layer at the chosen positions.

    Example:
        >>> import lenslib
        >>> model = lenslib.load_model("tiny-llama")
        >>> result = lenslib.logit_lens(model, "abc", target="d", positions="last")
        >>> result.layer_labels, result.target_rank.shape       # [layer, pos]
        (['0_pre', '1_pre', 'final_post'], torch.Size([3, 1]))
        >>> float(result.kl_to_final[-1, 0])                    # the last layer is the model's output
        0.0

    Each layer's residual stream (``cache.accumulated_resid(apply_ln=True)``: the final norm
    ``ln_final`` applied with statistics recomputed per layer, its weight included) goes through
    ``unembed`` (``W_U`` and ``b_U``) and the model's own output transform (e.g. Gemma 2's
    soft-capping). Statistics are reduced tile by tile (``[positions x layers, 2048 columns]`` of
    the vocabulary, see :mod:`lenslib.core.stats`): no position's full ``d_vocab`` logits are
    ever held, so extra memory is at most two tiles of ``chunk_bytes`` plus the cached residual
    stream, whatever the prompt length.

    Args:
        model: a ``TransformerBridge`` (see :func:`lenslib.load_model`).
        prompt: a string, or a list of strings run in batches of ``batch_size``; each result
            equals the single-prompt run (prompts are right-padded, and causal attention means
            padding never affects real positions).
        k: number of top tokens to keep per layer and position, 1 <= k <= d_vocab.
        target: the token to track. ``None`` (default): the actual next input token at each
            position (none at the last). A string (e.g. ``" Paris"``, leading space included)
            or a token id: that token at every position. A string of several tokens
            (``" Buenos Aires"``) is tracked as the joint log-probability of the whole answer
            after the prompt, at the last position only (``positions="last"``; see
            :mod:`lenslib.lens.answers`). With a list of prompts, a list gives one target each.
        positions: ``None`` (all), an int, a slice, a list of ints (negative counts from the
            end), or ``"last"``; indices into the tokens run, BOS included.
        incl_mid: also decode the stream after each block's attention (``"{l}_mid"`` labels).
        prepend_bos: prepend BOS; ``None`` uses the model's default (TransformerLens prepends).
        batch_size: prompts per forward pass when ``prompt`` is a list.
        chunk_bytes: memory budget for one tile of fp32 logits (16 MiB: it stays in cache).
        forward: how the residual stream is computed (see :mod:`lenslib.core.forward`).
            ``"auto"`` (default): the Hugging Face decoder layers with SDPA attention where that
            reproduces the bridge's hooks exactly (verified architectures, no hooks attached,
            weights unprocessed), else ``model.run_with_cache``; ``"sdpa"``: that path or an
            error; ``"bridge"``: always ``run_with_cache`` (eager attention, the reference).
            ``LensResult.forward_path`` says which ran.
        lens: a :class:`lenslib.tuned.translators.TunedLens`: each layer is decoded as
            ``unembed(ln_final(h + h @ A + b))`` (the tuned lens); ``None`` is the logit lens.

    Returns:
        A :class:`LensResult` (a list of them when ``prompt`` is a list). Shapes ``[layer, pos]``
        and ``[layer, pos, k]``; entropy and KL in nats.

    Raises:
        ValueError: empty prompt, prompt longer than the model's context, bad ``k``, bad target,
            a ``lens`` for another model (:class:`lenslib.tuned.translators.LensMismatchError`).
        IndexError: a position outside the prompt.
    """
    prompts = check_prompts(prompt)
    targets = _broadcast_targets(target, len(prompts), isinstance(prompt, str))
    d_vocab = int(model.cfg.d_vocab)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d_vocab:
        raise InputError(f"k must be an int in [1, {d_vocab}] (the vocabulary size), got {k!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    if forward not in FORWARD_CHOICES:
        raise InputError(f"forward must be one of {FORWARD_CHOICES}, got {forward!r}")
    if lens is not None:
        lens.check_model(model)

    tokens = [tokenize(model, p, prepend_bos) for p in prompts]
    if any(is_multi_token(model, t) for t in targets):  # joint log-prob: lenslib/answers.py
        results = lens_multi_token(model, tokens, targets, positions, k=k, incl_mid=incl_mid,
                                   batch_size=batch_size, chunk_bytes=chunk_bytes, forward=forward,
                                   lens=lens)
        return results[0] if isinstance(prompt, str) else results
    chosen = [resolve_positions(positions, len(t)) for t in tokens]
    target_ids = [
        _target_ids(model, tgt, toks, pos) for tgt, toks, pos in zip(targets, tokens, chosen)
    ]
    results = []
    for start in range(0, len(prompts), batch_size):
        stop = start + batch_size
        results += lens_batch(
            model, tokens[start:stop], chosen[start:stop], target_ids[start:stop],
            targets[start:stop], k=k, incl_mid=incl_mid, chunk_bytes=chunk_bytes, forward=forward,
            lens=lens,
        )
    return results[0] if isinstance(prompt, str) else results


def _broadcast_targets(target, n_prompts: int, single: bool) -> list[Target]:
    """One target per prompt: a list is matched to a list of prompts, anything else repeated."""
    if isinstance(target, (list, tuple)):
        if single or len(target) != n_prompts:
            raise InputError(
                f"a list of targets needs a list of prompts of the same length; got "
                f"{len(target)} targets for {n_prompts} prompt(s). Pass one string or id to "
                "track the same token everywhere."
            )
        return list(target)
    return [target] * n_prompts


def _target_ids(model, target: Target, tokens: Tensor, positions: Tensor) -> Tensor:
    """``[chosen]`` the tracked token id at each chosen position (-1: no next input token)."""
    if target is None:
        following = torch.cat([tokens[1:], torch.tensor([-1])])
        return following[positions]
    if isinstance(target, bool) or not isinstance(target, (str, int)):
        raise InputError(
            f"target must be None (the next input token), a string such as ' Paris', or a token "
            f"id; got {target!r}"
        )
    token = token_id(model, target, "target")  # several tokens never get here: lens/answers.py
    return torch.full((positions.numel(),), token, dtype=torch.long)
