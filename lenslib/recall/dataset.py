"""A curated factual-recall prompt set shipped with lenslib: prompts whose next token is a fact.

Each item's prompt is phrased so that a base model's natural continuation is the answer
(``"The Eiffel Tower is located in the city of"`` -> ``" Paris"``). Answers keep their leading
space. Most are one token for gemma-3-270m's tokenizer; a few (``" Buenos Aires"``,
``" San Francisco"``) are several tokens for every tokenizer, and other tokenizers split more of
them. :func:`lenslib.recall.analysis.run_recall` tracks an answer of several tokens as the joint
probability of the whole answer (:mod:`lenslib.lens.answers`), so every model keeps every prompt;
:func:`single_token_items` keeps only the one-token ones.

>>> from lenslib.recall.dataset import load_recall_dataset, relations
>>> items = load_recall_dataset("country_capital")
>>> items[0].prompt + items[0].answer
'The capital of France is the city of Paris'
>>> len(relations()) >= 6
True
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Iterable, Sequence, Union

from lenslib.core.tokens import answer_ids
from lenslib.errors import InputError

DATA_FILE = "factual_recall.json"


@dataclass(frozen=True)
class RecallItem:
    """One fact to recall.

    Example:
        >>> import lenslib
        >>> item = lenslib.RecallItem("country_capital", "France", "The capital of France is the city of", " Paris")
        >>> item.answer
        ' Paris'

    Attributes:
        relation: the kind of fact, e.g. ``"country_capital"`` (see :func:`relations`).
        subject: the entity the fact is about, e.g. ``"France"``.
        prompt: the text the model continues, e.g. ``"The capital of France is the city of"``.
        answer: the correct continuation, leading space included, e.g. ``" Paris"``; one token
            or several (``" Buenos Aires"``).
    """

    relation: str
    subject: str
    prompt: str
    answer: str


@functools.lru_cache(maxsize=1)
def _all_items() -> tuple[RecallItem, ...]:
    text = resources.files("lenslib").joinpath("data", DATA_FILE).read_text(encoding="utf-8")
    return tuple(RecallItem(**row) for row in json.loads(text)["items"])


def relations() -> list[str]:
    """The relation names in the shipped dataset, in file order (e.g. ``"country_capital"``)."""
    return _relation_names()


def _relation_names() -> list[str]:  # load_recall_dataset's parameter shadows relations()
    return list(dict.fromkeys(item.relation for item in _all_items()))


def load_recall_dataset(relations: Union[None, str, Sequence[str]] = None) -> list[RecallItem]:
    """The shipped factual-recall items, optionally only some relations.

    Example:
        >>> import lenslib
        >>> items = lenslib.load_recall_dataset("country_capital")
        >>> items[0].relation, type(items[0].prompt).__name__
        ('country_capital', 'str')

    Args:
        relations: ``None`` (all items), one relation name, or a list of names; see
            :func:`relations` for the valid ones.

    Returns:
        The items in file order (grouped by relation).

    Raises:
        ValueError: an unknown relation name; the message lists the valid ones.
    """
    items = list(_all_items())
    if relations is None:
        return items
    wanted = [relations] if isinstance(relations, str) else list(relations)
    valid = _relation_names()
    unknown = [name for name in wanted if name not in valid]
    if unknown:
        raise InputError(f"unknown relation(s) {unknown}; the dataset has: {', '.join(valid)}")
    return [item for item in items if item.relation in wanted]


def answer_token_ids(items: Iterable[RecallItem], model_or_tokenizer) -> list[list[int]]:
    """Each answer's token ids, as the lens tokenizes it (:func:`lenslib.core.tokens.answer_ids`:
    no BOS, no special tokens).

    Args:
        items: recall items.
        model_or_tokenizer: a ``TransformerBridge`` or a Hugging Face tokenizer; the tokenizer
            alone is enough, no model weights are needed.

    Returns:
        One list of ids per item; length 1 means the answer is a single token for that model.
    """
    return [answer_ids(model_or_tokenizer, item.answer, f"the answer of {item.prompt!r}") for item in items]


def single_token_flags(items: Sequence[RecallItem], model_or_tokenizer) -> list[bool]:
    """Whether each answer is exactly one token for this model's tokenizer (computed, not stored)."""
    return [len(ids) == 1 for ids in answer_token_ids(items, model_or_tokenizer)]


def single_token_items(items: Sequence[RecallItem], model_or_tokenizer) -> list[RecallItem]:
    """The items whose answer is one token for this model, e.g. before lensing smollm2-135m.

    Not needed by :func:`lenslib.recall.analysis.run_recall`, which tracks a multi-token answer jointly;
    useful where one next-token rank per answer is wanted.
    """
    flags = single_token_flags(items, model_or_tokenizer)
    return [item for item, single in zip(items, flags) if single]
