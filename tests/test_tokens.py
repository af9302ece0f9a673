"""lenslib.core.tokens: the one place text becomes token ids, positions and padded batches."""

from __future__ import annotations

import pytest
import torch

import lenslib
from lenslib.core.tokens import answer_ids, pad_batch, resolve_positions, token_id, tokenize
from lenslib.recall.dataset import load_recall_dataset


def test_answer_ids_are_what_the_bridge_tokenizes_without_bos(tiny):
    for text in ["d", "ef", " a b", "Hello there"]:
        assert answer_ids(tiny, text) == tiny.to_tokens(text, prepend_bos=False)[0].tolist()
        assert answer_ids(tiny.tokenizer, text) == answer_ids(tiny, text)  # a tokenizer is enough


@pytest.mark.real_model
@pytest.mark.parametrize("fixture", ["smollm2", "gemma"])
def test_answer_ids_match_the_bridge_on_every_recall_answer(fixture, request):
    """The lens (to_tokens) and the recall set (tokenizer.encode) once tokenized answers two ways;
    the one implementation must give what the bridge gives, on every answer of the dataset."""
    model = request.getfixturevalue(fixture)
    answers = sorted({item.answer for item in load_recall_dataset()}) + [" Paris", " Buenos Aires", "Hello"]
    for text in answers:
        assert answer_ids(model, text) == model.to_tokens(text, prepend_bos=False)[0].tolist(), text


def test_token_id_refuses_several_pieces_and_names_them(tiny):
    assert token_id(tiny, "d") == answer_ids(tiny, "d")[0]
    with pytest.raises(lenslib.InputError, match=r"is 2 tokens \['e', 'f'\]"):
        token_id(tiny, "ef")
    with pytest.raises(lenslib.InputError, match="outside the vocabulary"):
        token_id(tiny, 10**6)


def test_too_long_is_an_error_that_says_the_limit_everywhere(tiny):
    long_text = "a" * 200  # the tiny model's context is 128
    with pytest.raises(lenslib.InputError, match="context is 128"):
        tokenize(tiny, long_text)
    with pytest.raises(lenslib.InputError, match="context is 128"):
        pad_batch(tiny, [torch.ones(129, dtype=torch.long)])
    from lenslib.tuned.residuals import collect_residuals

    with pytest.raises(lenslib.InputError, match=r"text 1 .*context is 128"):  # fitting text: no silent truncation
        collect_residuals(tiny, ["short", long_text], progress=False)


def test_pad_batch_right_pads_and_masks(tiny):
    batch, mask = pad_batch(tiny, [torch.tensor([1, 2, 3]), torch.tensor([1, 2])])
    pad = tiny.tokenizer.pad_token_id
    assert batch.tolist() == [[1, 2, 3], [1, 2, pad]] and mask.tolist() == [[1, 1, 1], [1, 1, 0]]


def test_positions(tiny):
    assert resolve_positions("last", 5).tolist() == [4]
    assert resolve_positions([-1, 0], 5).tolist() == [4, 0]
    with pytest.raises(IndexError, match="outside the prompt"):
        resolve_positions(7, 5)
