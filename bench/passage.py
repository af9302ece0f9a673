"""The English text the suites read (``bench/passage.txt``) and prompts of an exact token length."""

from __future__ import annotations

from pathlib import Path

import torch

PASSAGE = Path(__file__).resolve().parent / "passage.txt"
PASSAGE_SOURCE = (
    "Public-domain English prose written out from memory (small differences from the published "
    "texts are possible): the opening chapter of Dickens, 'A Tale of Two Cities' (1859); the "
    "opening chapter of Austen, 'Pride and Prejudice' (1813); the first paragraph of Melville, "
    "'Moby-Dick' (1851). Repeated, paragraph breaks between copies, only where a prompt needs "
    "more tokens than one copy holds (see 'text' per prompt length)."
)


def passage_text() -> str:
    """The passage, stripped of surrounding white space."""
    return PASSAGE.read_text(encoding="utf-8").strip()


def prompt_of_length(model, text: str, n_tokens: int) -> tuple[str, torch.Tensor, int]:
    """A prefix of ``text`` (repeated if need be) that ``model.to_tokens`` makes exactly ``n_tokens``.

    Returns the prompt, its tokens ``[1, n_tokens]`` (BOS included) and how many copies of the
    passage it needed.
    """
    tokenizer = model.tokenizer
    copies = 1
    while True:
        source = "\n\n".join([text] * copies)
        encoded = tokenizer(source, add_special_tokens=False, return_offsets_mapping=True)
        if len(encoded["input_ids"]) >= n_tokens + 8:
            break
        copies += 1
    ends = [end for _, end in encoded["offset_mapping"]]
    n_text = n_tokens - 1  # the bridge prepends BOS
    for _ in range(50):
        n_text = min(max(n_text, 1), len(ends))
        prompt = source[: ends[n_text - 1]]
        tokens = model.to_tokens(prompt)
        if tokens.shape[1] == n_tokens:
            return prompt, tokens, copies
        n_text += n_tokens - tokens.shape[1]
    raise RuntimeError(f"found no prefix of the passage that is exactly {n_tokens} tokens")
