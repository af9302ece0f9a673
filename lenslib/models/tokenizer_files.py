"""The tokenizer files in a cache entry: written in the form that parses fastest, read directly.

Gemma 3's ``tokenizer.json`` is 33 MB: 262,144 tokens and 514,906 BPE merges. Loading it is
most of a warm ``load_model``, and the Rust parse holds the GIL, so nothing overlaps it. Two
things make it cheaper without changing a single token (bench/ measures how much):

- :func:`compact_bpe_merges` rewrites the merges from pairs (``["a", "b"]``, what
  ``save_pretrained`` writes) to the older ``"a b"`` strings, which ``tokenizers`` parses
  faster. It verifies that the parsed tokenizer is unchanged before replacing
  the file.
- :func:`load_cached_tokenizer` hands the file straight to the tokenizer class instead of going
  through ``AutoTokenizer.from_pretrained``, which parses the JSON in Python first.
"""

from __future__ import annotations

import json
from pathlib import Path

from lenslib.core.files import write_text_atomic
from lenslib.errors import InputError

# Keys of a saved tokenizer_config.json that describe where it was loaded from, not the tokenizer.
_PROVENANCE_KEYS = ("tokenizer_class", "is_local", "local_files_only", "auto_map", "name_or_path")


def compact_bpe_merges(tokenizer_json: Path) -> bool:
    """Rewrite a BPE tokenizer's merges as ``"left right"`` strings, if that is lossless.

    Lossless means no merge part contains a space (the separator), and ``tokenizers`` parses
    the rewritten file into a tokenizer whose canonical serialisation equals the original's.
    Otherwise the file is left as it was.

    Returns:
        Whether the file was rewritten.
    """
    from tokenizers import Tokenizer

    text = tokenizer_json.read_text(encoding="utf-8")
    spec = json.loads(text)
    model = spec.get("model", {})
    merges = model.get("merges")
    if model.get("type") != "BPE" or not merges or not isinstance(merges[0], list):
        return False
    if any(" " in part for pair in merges for part in pair):
        return False
    model["merges"] = [f"{left} {right}" for left, right in merges]
    compact = json.dumps(spec, ensure_ascii=False)
    if Tokenizer.from_str(compact).to_str() != Tokenizer.from_str(text).to_str():
        return False
    write_text_atomic(tokenizer_json, compact)
    return True


def load_cached_tokenizer(directory: Path):
    """The tokenizer saved in a cache entry, built straight from its ``tokenizer.json``.

    Equivalent to ``AutoTokenizer.from_pretrained(directory, add_bos_token=True)`` (the tests
    check it token for token, both ways, on every bundled model), but faster for a large file
    such as Gemma's 33 MB, 262k-token one: ``from_pretrained`` parses the JSON in Python to pass the vocabulary
    to ``GemmaTokenizer.__init__``, which rebuilds it; here the same class gets the file and the
    Rust ``tokenizers`` library reads it once. ``add_bos_token=True`` because TransformerLens
    reloads any tokenizer that does not add BOS itself.
    """
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer_class = tokenizer_class_from_name(config["tokenizer_class"])
    if tokenizer_class is None:
        raise InputError(f"unknown tokenizer class {config['tokenizer_class']!r} in {directory}")
    kwargs = {key: value for key, value in config.items() if key not in _PROVENANCE_KEYS}
    return tokenizer_class(
        tokenizer_file=str(directory / "tokenizer.json"),
        name_or_path=str(directory),
        **{**kwargs, "add_bos_token": True},
    )
