"""The cached tokenizers load fast (lenslib.models.loading.load_cached_tokenizer) and still tokenize
exactly as transformers' own loader does: the lens's reference tests cannot catch a tokenizer
change, because the lens and the reference share the input ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lenslib.models.loading import BUNDLED, hf_model_dir, load_cached_tokenizer
from lenslib.models.tokenizer_files import compact_bpe_merges

pytestmark = pytest.mark.real_model

PASSAGE = (Path(__file__).resolve().parents[1] / "bench" / "passage.txt").read_text(encoding="utf-8")
AWKWARD = [
    "",
    " ",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\n\n\nand  double  spaces",
    "The Eiffel Tower is located in the city of",
    "naïve café, Zürich, São Paulo, Kraków, Ångström, ß",
    "東京は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다.",
    "مرحبا بالعالم, שלום עולם, Привет, мир! Γειά σου κόσμε",
    "emoji 🙂👩‍💻🇫🇷 and symbols ∑∫√∞ ≠ ≤ ← → ©®™",
    "def f(x):\n    return x ** 2  # comment\n\nprint(f(3))",
    "numbers 3.14159 1,000,000 2026-11-23 0xDEADBEEF 1e-9",
    "special-looking text <bos> <eos> <pad> <|im_start|> <|im_end|> <|endoftext|> <mask>",
    "control \x00\x07\x1b characters and a zero-width\u200bjoiner",
    "URL https://example.com/a?b=c&d=e and e-mail a.b@example.org",
]


def _texts() -> list[str]:
    from lenslib.recall.dataset import load_recall_dataset

    items = load_recall_dataset()
    return AWKWARD + PASSAGE.split("\n\n") + [PASSAGE] + [i.prompt for i in items] + [i.answer for i in items]


@pytest.fixture(scope="module", params=sorted(BUNDLED))
def pair(request):
    from transformers import AutoTokenizer

    directory = hf_model_dir(request.param)
    return (
        AutoTokenizer.from_pretrained(directory, add_bos_token=True),
        load_cached_tokenizer(directory),
    )


def test_same_class_settings_and_special_tokens(pair):
    standard, fast = pair
    assert type(fast) is type(standard)
    for attribute in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "padding_side",
                      "truncation_side", "model_max_length", "all_special_ids", "add_bos_token"):
        assert getattr(fast, attribute) == getattr(standard, attribute), attribute
    assert len(fast) == len(standard) and fast.get_vocab() == standard.get_vocab()
    assert fast.added_tokens_decoder == standard.added_tokens_decoder
    assert fast.init_kwargs["name_or_path"] == standard.init_kwargs["name_or_path"]  # TransformerLens pops it


def test_same_ids_on_real_and_awkward_text(pair):
    standard, fast = pair
    texts = _texts()
    assert len(texts) > 600  # a size floor, not a tolerance: 686 texts when written
    for special in (True, False):
        want = standard(texts, add_special_tokens=special)["input_ids"]
        got = fast(texts, add_special_tokens=special)["input_ids"]
        assert got == want
    assert fast("a")["input_ids"][0] == standard.bos_token_id  # BOS is added
    batch = dict(padding=True, return_tensors="pt")
    want, got = standard(AWKWARD, **batch), fast(AWKWARD, **batch)
    assert got["input_ids"].equal(want["input_ids"]) and got["attention_mask"].equal(want["attention_mask"])


def test_same_strings_for_every_token_id(pair):
    standard, fast = pair
    every = [[i] for i in range(len(standard))]
    assert fast.batch_decode(every) == standard.batch_decode(every)
    assert fast.convert_ids_to_tokens(list(range(len(standard)))) == standard.convert_ids_to_tokens(
        list(range(len(standard)))
    )
    ids = standard(PASSAGE)["input_ids"]
    assert fast.decode(ids, skip_special_tokens=True) == standard.decode(ids, skip_special_tokens=True)


def test_the_loaded_bridge_keeps_this_tokenizer(gemma):
    """TransformerLens would reload a tokenizer that does not add BOS; it keeps ours."""
    config = json.loads((hf_model_dir("gemma-3-270m") / "tokenizer_config.json").read_text())
    assert type(gemma.tokenizer).__name__ == config["tokenizer_class"]
    assert gemma.tokenizer.name_or_path == str(hf_model_dir("gemma-3-270m"))
    tokens = gemma.to_tokens("The Eiffel Tower")[0].tolist()
    assert tokens[0] == gemma.tokenizer.bos_token_id and tokens[1:] == gemma.tokenizer(
        "The Eiffel Tower", add_special_tokens=False
    )["input_ids"]


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_cached_file_has_compact_merges_equal_to_the_saved_pairs(name, tmp_path):
    """The cache holds the "a b" form (faster to parse); written back as the pairs that
    save_pretrained wrote, it is the same tokenizer, and compacting that again gives this file."""
    from tokenizers import Tokenizer

    cached = hf_model_dir(name) / "tokenizer.json"
    spec = json.loads(cached.read_text(encoding="utf-8"))
    merges = spec["model"]["merges"]
    # a size floor, not a tolerance: a real BPE file (48,900 merges for SmolLM2, 514,906 for Gemma)
    assert len(merges) > 40_000 and all(isinstance(m, str) and m.count(" ") == 1 for m in merges)
    spec["model"]["merges"] = [m.split(" ") for m in merges]
    as_saved = tmp_path / "tokenizer.json"
    as_saved.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    compact, pairs = Tokenizer.from_file(str(cached)), Tokenizer.from_file(str(as_saved))
    assert compact.to_str() == pairs.to_str()
    texts = _texts()
    assert [e.ids for e in compact.encode_batch(texts)] == [e.ids for e in pairs.encode_batch(texts)]
    assert compact_bpe_merges(as_saved)
    assert as_saved.read_bytes() == cached.read_bytes()
