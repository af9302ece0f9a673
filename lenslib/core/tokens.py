"""Text to token ids, positions and padded batches: the one place lenslib turns input into tensors.

>>> import lenslib
>>> from lenslib.core.tokens import resolve_positions, token_id, tokenize
>>> model = lenslib.load_model("tiny-llama")
>>> tokenize(model, "abc").tolist()          # BOS (id 1) prepended, one id per character
[1, 4, 5, 6]
>>> token_id(model, "d"), resolve_positions("last", 4).tolist()
(7, [3])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence, Union

import torch
from jaxtyping import Int
from torch import Tensor

from lenslib.errors import InputError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

Positions = Union[None, int, slice, Sequence[int], str]
Token = Union[str, int]


class PositionError(InputError, IndexError):
    """A position outside the prompt."""


def check_prompts(prompt: Union[str, Sequence[str]]) -> list[str]:
    """``prompt`` as a non-empty list of non-empty strings, or an error that says which is wrong."""
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, (list, tuple)) and prompt:
        prompts = list(prompt)
    else:
        raise InputError(f"prompt must be a string or a non-empty list of strings, got {prompt!r}")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise InputError(f"prompt {i} is {type(p).__name__}, not a string: {p!r}")
        if not p:
            raise InputError(f"prompt {i} is empty: give the text whose next tokens to lens")
    return prompts


def tokenize(
    model: "TransformerBridge", prompt: str, prepend_bos: Optional[bool] = None, what: str = "the prompt"
) -> Int[Tensor, "pos"]:
    """The prompt's token ids on the CPU, as the bridge runs them (BOS per ``prepend_bos``).

    Raises:
        InputError: the prompt is longer than the model's context (never truncated silently;
            ``what`` names it in the message).
    """
    ids = model.to_tokens(prompt, prepend_bos=prepend_bos, truncate=False)[0].cpu()
    check_length(ids.numel(), int(model.cfg.n_ctx), what)
    return ids


def check_length(n_tokens: int, n_ctx: int, what: str) -> None:
    """Raise :class:`InputError` when ``n_tokens`` exceeds the context ``n_ctx``."""
    if n_tokens > n_ctx:
        raise InputError(
            f"{what} is {n_tokens} tokens (BOS included) but the model's context is {n_ctx}; "
            f"shorten it, or use a window of at most {n_ctx} tokens."
        )


def answer_ids(model_or_tokenizer, answer: str, name: str = "the answer") -> list[int]:
    """A string's token ids as lenslib appends or tracks them: tokenized alone, no BOS and no
    other special token (``tokenizer.encode(answer, add_special_tokens=False)``).

    Args:
        model_or_tokenizer: a ``TransformerBridge`` or a Hugging Face tokenizer (the tokenizer
            alone is enough, no weights are needed).
        answer: the text, e.g. ``" Paris"`` (mind the leading space).
        name: what to call the text in an error message.

    Raises:
        InputError: an empty string, or one that tokenizes to nothing.
    """
    if not isinstance(answer, str):
        raise InputError(f"{name} must be text such as ' Paris' (mind the space); got {answer!r}")
    if not answer:
        raise InputError(f"{name} is an empty string: give text such as ' Paris' (mind the space)")
    ids = tokenizer_of(model_or_tokenizer).encode(answer, add_special_tokens=False)
    if not ids:
        raise InputError(f"{name} {answer!r} tokenizes to nothing; give text that has tokens")
    return list(ids)


def tokenizer_of(model_or_tokenizer):
    """The Hugging Face tokenizer of a ``TransformerBridge``, or the tokenizer itself."""
    if hasattr(model_or_tokenizer, "encode") and not hasattr(model_or_tokenizer, "cfg"):
        return model_or_tokenizer
    tokenizer = getattr(model_or_tokenizer, "tokenizer", None)
    if tokenizer is None:
        raise InputError(
            f"expected a TransformerBridge or a Hugging Face tokenizer, got {type(model_or_tokenizer).__name__}"
        )
    return tokenizer


def token_id(model: "TransformerBridge", token: Token, name: str = "target") -> int:
    """One token id from a string of one token or an id.

    Raises:
        InputError: not a string or int, an id outside the vocabulary, an empty string, or a
            string of several tokens (the message shows the pieces).
    """
    if isinstance(token, bool) or not isinstance(token, (str, int)):
        raise InputError(f"{name} must be a token string such as ' Paris' or an id, got {token!r}")
    if isinstance(token, int):
        d_vocab = int(model.cfg.d_vocab)
        if not 0 <= token < d_vocab:
            raise InputError(f"{name} id {token} is outside the vocabulary [0, {d_vocab})")
        return token
    ids = answer_ids(model, token, name)
    if len(ids) > 1:
        pieces = model.to_str_tokens(torch.tensor(ids), prepend_bos=False)
        raise InputError(
            f"{name} {token!r} is {len(ids)} tokens {pieces}; a logit belongs to one token. "
            f"Pass its first piece ({pieces[0]!r}) or its id ({ids[0]}) explicitly."
        )
    return ids[0]


def is_multi_token(model: "TransformerBridge", target) -> bool:
    """Whether ``target`` is a string of more than one token for this model."""
    return isinstance(target, str) and bool(target) and len(answer_ids(model, target)) > 1


def resolve_positions(positions: Positions, n_tokens: int) -> Int[Tensor, "chosen"]:
    """Position indices in ``[0, n_tokens)`` from ``None``/``"all"``, ``"last"``, an int, a slice
    or a list (negative indices count from the end).

    Raises:
        InputError: an unknown form, or a selection of no position.
        PositionError: a position outside the prompt (also an ``IndexError``).
    """
    if positions is None:
        index = list(range(n_tokens))
    elif isinstance(positions, str):
        if positions not in ("last", "all"):
            raise InputError(f"positions must be 'last', 'all', an int, a slice or a list; got {positions!r}")
        index = [n_tokens - 1] if positions == "last" else list(range(n_tokens))
    elif isinstance(positions, slice):
        index = list(range(n_tokens))[positions]
    elif isinstance(positions, int) and not isinstance(positions, bool):
        index = [positions]
    elif isinstance(positions, (list, tuple, range, Tensor)):
        index = [int(p) for p in positions]
    else:
        raise InputError(f"positions must be None, 'last', an int, a slice or a list; got {positions!r}")
    if not index:
        raise InputError(f"positions {positions!r} selects no position of a {n_tokens}-token prompt")
    for p in index:
        if not -n_tokens <= p < n_tokens:
            raise PositionError(
                f"position {p} is outside the prompt, which has {n_tokens} tokens (BOS included); "
                f"use 0..{n_tokens - 1}, or -{n_tokens}..-1 from the end."
            )
    return torch.tensor([p % n_tokens for p in index], dtype=torch.long)


def pad_batch(
    model: "TransformerBridge", tokens: Sequence[Int[Tensor, "pos"]]
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Right-pad token sequences into ``(batch, attention_mask)``, both ``[batch, longest]``.

    Padding uses the tokenizer's pad id (0 without one); the mask is 1 on real tokens. Causal
    attention means right padding never changes a real position.

    Raises:
        InputError: a sequence longer than the model's context.
    """
    lengths = [t.numel() for t in tokens]
    for n in lengths:
        check_length(n, int(model.cfg.n_ctx), "a sequence")
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    batch = torch.full((len(tokens), max(lengths)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for row, ids in enumerate(tokens):
        batch[row, : ids.numel()] = ids
        mask[row, : ids.numel()] = 1
    return batch, mask


class Decoder:
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
