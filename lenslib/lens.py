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

import inspect
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from lenslib.answers import is_multi_token, lens_multi_token
from lenslib.fast_forward import FORWARD_CHOICES, residual_cache
from lenslib.gc_pause import collection_paused
from lenslib.lens_result import LensResult
from lenslib.lens_stats import DEFAULT_CHUNK_BYTES, lens_stats

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from lenslib.tuned_lens import TunedLens

Positions = Union[None, int, slice, Sequence[int], str]
Target = Union[None, str, int]


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
    lens: Optional["TunedLens"] = None,
) -> Union[LensResult, list[LensResult]]:
    """Run the model once and decode every layer at the chosen positions.

    Each layer's residual stream (``cache.accumulated_resid(apply_ln=True)``: the final norm
    ``ln_final`` applied with statistics recomputed per layer, its weight included) goes through
    ``unembed`` (``W_U`` and ``b_U``) and the model's own output transform (e.g. Gemma 2's
    soft-capping). Statistics are reduced tile by tile (``[positions x layers, 2048 columns]`` of
    the vocabulary, see :mod:`lenslib.lens_stats`): no position's full ``d_vocab`` logits are
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
            :mod:`lenslib.answers`). With a list of prompts, a list gives one target each.
        positions: ``None`` (all), an int, a slice, a list of ints (negative counts from the
            end), or ``"last"``; indices into the tokens run, BOS included.
        incl_mid: also decode the stream after each block's attention (``"{l}_mid"`` labels).
        prepend_bos: prepend BOS; ``None`` uses the model's default (TransformerLens prepends).
        batch_size: prompts per forward pass when ``prompt`` is a list.
        chunk_bytes: memory budget for one tile of fp32 logits (16 MiB: it stays in cache).
        forward: how the residual stream is computed (see :mod:`lenslib.fast_forward`).
            ``"auto"`` (default): the Hugging Face decoder layers with SDPA attention where that
            reproduces the bridge's hooks exactly (verified architectures, no hooks attached,
            weights unprocessed), else ``model.run_with_cache``; ``"sdpa"``: that path or an
            error; ``"bridge"``: always ``run_with_cache`` (eager attention, the reference).
            ``LensResult.forward_path`` says which ran.
        lens: a :class:`lenslib.tuned_lens.TunedLens`: each layer is decoded as
            ``unembed(ln_final(h + h @ A + b))`` (the tuned lens); ``None`` is the logit lens.

    Returns:
        A :class:`LensResult` (a list of them when ``prompt`` is a list). Shapes ``[layer, pos]``
        and ``[layer, pos, k]``; entropy and KL in nats.

    Raises:
        ValueError: empty prompt, prompt longer than the model's context, bad ``k``, bad target,
            a ``lens`` for another model (:class:`lenslib.tuned_lens.LensMismatchError`).
        IndexError: a position outside the prompt.
    """
    prompts = _check_prompts(prompt)
    targets = _broadcast_targets(target, len(prompts), isinstance(prompt, str))
    d_vocab = int(model.cfg.d_vocab)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d_vocab:
        raise ValueError(f"k must be an int in [1, {d_vocab}] (the vocabulary size), got {k!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if forward not in FORWARD_CHOICES:
        raise ValueError(f"forward must be one of {FORWARD_CHOICES}, got {forward!r}")
    if lens is not None:
        lens.check_model(model)

    tokens = [_tokenize(model, p, prepend_bos) for p in prompts]
    if any(is_multi_token(model, t) for t in targets):  # joint log-prob: lenslib/answers.py
        results = lens_multi_token(model, tokens, targets, positions, k=k, incl_mid=incl_mid,
                                   batch_size=batch_size, chunk_bytes=chunk_bytes, forward=forward,
                                   lens=lens)
        return results[0] if isinstance(prompt, str) else results
    chosen = [_resolve_positions(positions, len(t)) for t in tokens]
    target_ids = [
        _target_ids(model, tgt, toks, pos) for tgt, toks, pos in zip(targets, tokens, chosen)
    ]
    results = []
    for start in range(0, len(prompts), batch_size):
        stop = start + batch_size
        results += _lens_batch(
            model, tokens[start:stop], chosen[start:stop], target_ids[start:stop],
            targets[start:stop], k=k, incl_mid=incl_mid, chunk_bytes=chunk_bytes, forward=forward,
            lens=lens,
        )
    return results[0] if isinstance(prompt, str) else results


def _check_prompts(prompt) -> list[str]:
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, (list, tuple)) and prompt:
        prompts = list(prompt)
    else:
        raise ValueError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"prompt {i} is {type(p).__name__}, not a string: {p!r}")
        if not p:
            raise ValueError(f"prompt {i} is empty: give the text whose next tokens to lens")
    return prompts


def _broadcast_targets(target, n_prompts: int, single: bool) -> list[Target]:
    if isinstance(target, (list, tuple)):
        if single or len(target) != n_prompts:
            raise ValueError(
                f"a list of targets needs a list of prompts of the same length; got "
                f"{len(target)} targets for {n_prompts} prompt(s). Pass one string or id to "
                "track the same token everywhere."
            )
        return list(target)
    return [target] * n_prompts


def _tokenize(model, prompt: str, prepend_bos: Optional[bool]) -> Tensor:
    ids = model.to_tokens(prompt, prepend_bos=prepend_bos, truncate=False)[0].cpu()
    n_ctx = int(model.cfg.n_ctx)
    if ids.numel() > n_ctx:
        raise ValueError(
            f"the prompt is {ids.numel()} tokens (BOS included) but the model's context is "
            f"{n_ctx}; shorten it, or lens a window of at most {n_ctx} tokens."
        )
    return ids


def _resolve_positions(positions: Positions, n_tokens: int) -> Tensor:
    if positions is None:
        index = list(range(n_tokens))
    elif isinstance(positions, str):
        if positions not in ("last", "all"):
            raise ValueError(f"positions must be 'last', 'all', an int, a slice or a list; got {positions!r}")
        index = [n_tokens - 1] if positions == "last" else list(range(n_tokens))
    elif isinstance(positions, slice):
        index = list(range(n_tokens))[positions]
    elif isinstance(positions, int) and not isinstance(positions, bool):
        index = [positions]
    elif isinstance(positions, (list, tuple, range, Tensor)):
        index = [int(p) for p in positions]
    else:
        raise ValueError(f"positions must be None, 'last', an int, a slice or a list; got {positions!r}")
    if not index:
        raise ValueError(f"positions {positions!r} selects no position of a {n_tokens}-token prompt")
    for p in index:
        if not -n_tokens <= p < n_tokens:
            raise IndexError(
                f"position {p} is outside the prompt, which has {n_tokens} tokens (BOS included); "
                f"use 0..{n_tokens - 1}, or -{n_tokens}..-1 from the end."
            )
    return torch.tensor([p % n_tokens for p in index], dtype=torch.long)


def _target_ids(model, target: Target, tokens: Tensor, positions: Tensor) -> Tensor:
    if target is None:
        following = torch.cat([tokens[1:], torch.tensor([-1])])
        return following[positions]
    if isinstance(target, bool) or not isinstance(target, (str, int)):
        raise ValueError(
            f"target must be None (the next input token), a string such as ' Paris', or a token "
            f"id; got {target!r}"
        )
    if isinstance(target, int):
        d_vocab = int(model.cfg.d_vocab)
        if not 0 <= target < d_vocab:
            raise ValueError(f"target id {target} is outside the vocabulary [0, {d_vocab})")
        token = target
    else:
        if not target:
            raise ValueError("target is an empty string: give a token such as ' Paris' (mind the space)")
        ids = model.to_tokens(target, prepend_bos=False)[0].tolist()
        if not ids:
            raise ValueError(f"target {target!r} tokenizes to nothing")
        token = ids[0]  # several tokens never get here: see lenslib/answers.py
    return torch.full((positions.numel(),), token, dtype=torch.long)


def _output_transform(model) -> Optional[Callable[[Tensor], Tensor]]:
    """The model's post-unembedding transform, or None when it is the identity."""
    from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter
    from transformer_lens.utilities.activation_functions import softcap_enabled

    adapter = getattr(model, "adapter", None)
    transform = getattr(adapter, "apply_output_logits_transform", None)
    if transform is None:
        return None
    inherited = type(adapter).apply_output_logits_transform is ArchitectureAdapter.apply_output_logits_transform
    if inherited and not softcap_enabled(getattr(adapter.cfg, "output_logits_soft_cap", None)):
        return None  # TransformerLens writes -1.0 for "no soft-cap"
    return transform


def _residual_hooks(n_layers: int, incl_mid: bool) -> list[str]:
    names = [f"blocks.{l}.hook_resid_pre" for l in range(n_layers)]
    if incl_mid:
        names += [f"blocks.{l}.hook_resid_mid" for l in range(n_layers)]
    return names + [f"blocks.{n_layers - 1}.hook_resid_post"]


def _forward_kwargs(model) -> dict:
    """Ask the Hugging Face model for the last position's logits only (the lens makes its own)."""
    hf_model = getattr(model, "original_model", None)
    if hf_model is not None and "logits_to_keep" in inspect.signature(hf_model.forward).parameters:
        return {"logits_to_keep": 1}
    return {}


@torch.no_grad()
def _lens_batch(model, tokens, chosen, target_ids, targets, *, k, incl_mid, chunk_bytes, forward="auto",
                lens=None):
    device = model.W_U.device
    lengths = [t.numel() for t in tokens]
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    batch = torch.full((len(tokens), max(lengths)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for row, ids in enumerate(tokens):
        batch[row, : ids.numel()] = ids
        mask[row, : ids.numel()] = 1
    pos_slice = None
    if len(tokens) == 1 and chosen[0].numel() == 1:
        pos_slice = int(chosen[0][0])  # cache one position only: the cheapest "last" lens
    cache, forward_path = residual_cache(
        model,
        batch.to(device),
        _residual_hooks(int(model.cfg.n_layers), incl_mid),
        attention_mask=mask.to(device),
        pos_slice=pos_slice,
        forward=forward,
    )
    stack, labels = cache.accumulated_resid(apply_ln=lens is None, incl_mid=incl_mid, return_labels=True)
    if lens is not None:  # translate the raw stream, then ln_final as apply_ln=True does
        from lenslib.tuned_lens import apply_lens

        stack = apply_lens(model, cache, stack, labels, lens)
    del cache
    if pos_slice is not None:
        rows = [stack[:, 0, 0:1]]
    else:
        rows = [_chosen_rows(stack[:, i], chosen[i]) for i in range(len(tokens))]
    stats = lens_stats(
        rows[0] if len(rows) == 1 else torch.cat(rows, dim=1),  # [layer, all chosen positions, d_model]
        model.W_U,
        getattr(model, "b_U", None),
        torch.cat(target_ids),
        k=k,
        output_transform=_output_transform(model),
        chunk_bytes=chunk_bytes,
    )
    decode = _Decoder(model.tokenizer)
    results, offset = [], 0
    # top_tokens is a list per layer and position (63k at 2048 tokens of SmolLM2): building them
    # set off full collections, 0.35 s of a 2048-token lens, 0.06 s with collection paused.
    with collection_paused():
        for ids, pos, tgt_ids, tgt in zip(tokens, chosen, target_ids, targets):
            span = slice(offset, offset + pos.numel())
            offset += pos.numel()
            top_ids = stats.top_ids[:, span]
            results.append(
                LensResult(
                    input_ids=ids,
                    str_tokens=decode.each(ids.tolist()),
                    positions=pos,
                    layer_labels=list(labels),
                    top_ids=top_ids,
                    top_probs=stats.top_probs[:, span],
                    top_tokens=[[decode.each(row) for row in layer] for layer in top_ids.tolist()],
                    entropy=stats.entropy[:, span],
                    kl_to_final=stats.kl_to_final[:, span],
                    target_ids=tgt_ids,
                    target_prob=stats.target_prob[:, span],
                    target_logprob=stats.target_logprob[:, span],
                    target_rank=stats.target_rank[:, span],
                    target_tokens=[decode.one(t) if t >= 0 else "" for t in tgt_ids.tolist()],
                    target_label="next token" if tgt is None else repr(decode.one(int(tgt_ids[0]))),
                    model_name=str(getattr(model.cfg, "model_name", "")),
                    forward_path=forward_path,
                )
            )
    return results


def _chosen_rows(stack: Tensor, positions: Tensor) -> Tensor:
    """``stack[:, positions]`` for a ``[layer, pos, d_model]`` stack: a view when the positions are
    all of them in order (the usual all-positions lens), so that the stream is not copied."""
    n_pos = stack.shape[1]
    if positions.numel() == n_pos and bool((positions == torch.arange(n_pos)).all()):
        return stack
    return stack[:, positions.to(stack.device)]


class _Decoder:
    """Token id -> string, memoised (a lens decodes the same few ids many times)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.memo: dict[int, str] = {}

    def one(self, token_id: int) -> str:
        if token_id not in self.memo:
            self.memo[token_id] = self.tokenizer.decode([token_id])
        return self.memo[token_id]

    def each(self, ids: list[int]) -> list[str]:
        return [self.one(i) for i in ids]
