"""compact_bpe_merges rewrites a tokenizer.json only where that cannot change a single token."""

from __future__ import annotations

import json

from tokenizers import Tokenizer
from tokenizers.models import BPE, WordLevel
from tokenizers.pre_tokenizers import Whitespace

from lenslib.models.tokenizer_files import compact_bpe_merges

TEXTS = ["abc abd", "cab bad dab", "a b c d", "abcd dcba", ""]


def _save(tokenizer: Tokenizer, path) -> str:
    tokenizer.save(str(path))
    return path.read_text(encoding="utf-8")


def _bpe(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = Whitespace()
    return tokenizer


def test_pair_merges_become_strings_and_every_encoding_stays(tmp_path):
    vocab = {"a": 0, "b": 1, "c": 2, "d": 3, "ab": 4, "abc": 5, "ab d": 6}
    path = tmp_path / "tokenizer.json"
    before = _save(_bpe(vocab, [("a", "b"), ("ab", "c")]), path)
    assert json.loads(before)["model"]["merges"] == [["a", "b"], ["ab", "c"]]

    assert compact_bpe_merges(path)
    assert json.loads(path.read_text(encoding="utf-8"))["model"]["merges"] == ["a b", "ab c"]
    original, compacted = Tokenizer.from_str(before), Tokenizer.from_file(str(path))
    assert compacted.to_str() == original.to_str()
    assert [e.ids for e in compacted.encode_batch(TEXTS)] == [e.ids for e in original.encode_batch(TEXTS)]
    assert not (tmp_path / "tokenizer.json.tmp").exists()
    assert not compact_bpe_merges(path)  # already compact: nothing to do


def test_a_merge_part_with_a_space_leaves_the_file_alone(tmp_path):
    vocab = {"a": 0, "b": 1, " ": 2, "a ": 3, "a b": 4}
    path = tmp_path / "tokenizer.json"
    before = _save(_bpe(vocab, [("a", " "), ("a ", "b")]), path)
    assert not compact_bpe_merges(path)
    assert path.read_text(encoding="utf-8") == before


def test_non_bpe_and_merge_free_tokenizers_are_left_alone(tmp_path):
    path = tmp_path / "tokenizer.json"
    before = _save(Tokenizer(WordLevel(vocab={"a": 0, "[UNK]": 1}, unk_token="[UNK]")), path)
    assert not compact_bpe_merges(path)
    assert path.read_text(encoding="utf-8") == before
    before = _save(_bpe({"a": 0, "b": 1}, []), path)
    assert not compact_bpe_merges(path)
    assert path.read_text(encoding="utf-8") == before


def test_a_rewrite_that_would_parse_differently_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "tokenizer.json"
    before = _save(_bpe({"a": 0, "b": 1, "ab": 2}, [("a", "b")]), path)
    real_from_str = Tokenizer.from_str

    class Drifting:  # stands in for a tokenizers release that reads "a b" strings differently
        @staticmethod
        def from_str(text):
            parsed = real_from_str(text)
            return _bpe({"a": 0, "b": 1, "ab": 2}, []) if '"a b"' in text else parsed

    monkeypatch.setattr("tokenizers.Tokenizer", Drifting)
    assert not compact_bpe_merges(path)
    assert path.read_text(encoding="utf-8") == before
