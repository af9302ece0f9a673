"""The text a tuned lens is fitted and scored on: Debian's ``fortunes`` package, split by document.

Source: the ``fortunes`` package of Debian (``apt-get install fortunes``; ``make setup``
installs it), the fortune-mod 1.99.1 quotation files in ``/usr/share/games/fortunes``. Licence:
BSD (the Regents of the University of California, 1991; see
``/usr/share/doc/fortunes/copyright``, which also credits the individual cookie files). The
files are short English quotations, jokes, poems and definitions, one document per ``%``-separated
entry; ``ascii-art`` and ``translate-me`` (pictures and non-English text) are left out.

Every document goes to the held-out split or the fitting split by a hash of its file and index
(about one in five held out), so no quotation is in both. Documents of one split are packed,
in a seeded order, into windows of about ``seq_len`` tokens separated by blank lines.

>>> docs = fortune_documents()                            # doctest: +SKIP
>>> len(docs) > 10_000                                    # doctest: +SKIP
True
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from lenslib.errors import CorpusNotAvailableError, InputError, NotEnoughTextError

FORTUNE_DIR = Path("/usr/share/games/fortunes")
EXCLUDED = {"ascii-art", "translate-me"}
HELDOUT_EVERY = 5  # one document in five (by hash) is held out
SOURCE = "Debian package 'fortunes' (fortune-mod 1.99.1), /usr/share/games/fortunes"
LICENCE = "BSD (Regents of the University of California); see /usr/share/doc/fortunes/copyright"




@dataclass(frozen=True)
class Document:
    """One fortune: its file, its index in the file, and its text."""

    source: str
    index: int
    text: str

    @property
    def heldout(self) -> bool:
        """Whether this document belongs to the held-out split (a hash of file and index)."""
        key = hashlib.sha1(f"{self.source}/{self.index}".encode()).digest()
        return key[0] % HELDOUT_EVERY == 0


@lru_cache(maxsize=2)
def fortune_documents(directory: Path = FORTUNE_DIR) -> tuple[Document, ...]:
    """Every fortune under ``directory`` as a :class:`Document` (whitespace-trimmed, non-empty).

    Raises:
        CorpusNotAvailableError: the directory has no fortune files.
    """
    files = sorted(p for p in Path(directory).glob("*") if p.is_file() and "." not in p.name
                   and p.name not in EXCLUDED)
    if not files:
        raise CorpusNotAvailableError(
            f"no fortune files in {directory}: install Debian's 'fortunes' package "
            "(`make setup`, or `apt-get install fortunes`) to fit a tuned lens on it, or pass "
            "your own texts to fit_tuned_lens."
        )
    docs = []
    for path in files:
        raw = path.read_text(encoding="utf-8", errors="replace")
        for i, chunk in enumerate(raw.split("\n%\n")):
            text = chunk.strip().strip("%").strip()
            if text:
                docs.append(Document(path.name, i, text))
    return tuple(docs)


def corpus_id(directory: Path = FORTUNE_DIR) -> str:
    """A short id of the installed corpus: ``"fortunes-"`` + 12 hex digits of its texts' SHA-256."""
    digest = hashlib.sha256()
    for doc in fortune_documents(directory):
        digest.update(f"{doc.source}/{doc.index}\0{doc.text}\0".encode())
    return "fortunes-" + digest.hexdigest()[:12]


def split_texts(
    tokenizer, split: str, n_tokens: int, *, seq_len: int = 128, seed: int = 0,
    directory: Path = FORTUNE_DIR,
) -> list[str]:
    """Windows of text from one split, about ``seq_len`` tokens each, ``n_tokens`` in all.

    Args:
        tokenizer: counts tokens (``len(tokenizer.encode(text, add_special_tokens=False))``).
        split: ``"fit"`` or ``"heldout"``.
        n_tokens: how many tokens to gather (counted without BOS); stops at the first window
            that reaches it.
        seq_len: tokens per window, about (a window ends at a document boundary once full;
            one longer document is cut at ``seq_len`` tokens).
        seed: the order documents are packed in.

    Raises:
        ValueError: unknown split.
        NotEnoughTextError: the split holds fewer than ``n_tokens`` tokens.
    """
    if split not in ("fit", "heldout"):
        raise InputError(f"split must be 'fit' or 'heldout', got {split!r}")
    docs = [d for d in fortune_documents(directory) if d.heldout == (split == "heldout")]
    random.Random(seed).shuffle(docs)
    windows, current, current_len, total = [], [], 0, 0
    for doc in docs:
        ids = tokenizer.encode(doc.text, add_special_tokens=False)[:seq_len]
        if current and current_len + len(ids) + 2 > seq_len:
            windows.append("\n\n".join(current))
            total += current_len
            current, current_len = [], 0
            if total >= n_tokens:
                return windows
        text = doc.text if len(ids) < seq_len else tokenizer.decode(ids)
        current.append(text)
        current_len += len(ids) + (2 if len(current) > 1 else 0)
    raise NotEnoughTextError(
        f"the {split!r} split of {SOURCE} holds about {total + current_len} tokens for this "
        f"tokenizer; {n_tokens} were asked for. Ask for fewer tokens, or fit on your own texts."
    )
