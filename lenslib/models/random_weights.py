"""Randomly initialised models: a tiny one for tests and demos, and full-size controls.

A lens on a random model is the baseline every real result should beat: its layers carry no
learned prediction, so any structure in its lens comes from the architecture alone.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

import torch

from lenslib.errors import InputError
from lenslib.models.catalog import BUNDLED
from lenslib.models.placement import default_device
from lenslib.models.weights import hf_model_dir

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

TINY_SIZES = {"n_layers": 2, "d_model": 32, "d_vocab": 64, "n_ctx": 128}


def _boot(hub_name: str, hf_model, tokenizer, device: str, dtype: torch.dtype) -> "TransformerBridge":
    from transformer_lens.model_bridge import TransformerBridge

    hf_model = hf_model.to(dtype)
    return TransformerBridge.boot_transformers(
        hub_name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
    )


def tiny_model(
    *, seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> "TransformerBridge":
    """A seeded 2-layer Llama (d_model 32, vocabulary 64, context 128) with a character tokenizer.

    Each ASCII letter and each of ``" .,!?'-:"`` is one token; ``<bos>`` is id 1. Builds in
    well under a second with no files beyond the tokenizer shipped in ``lenslib/data``.
    """
    hf_model, tokenizer = tiny_hf_model(seed=seed)
    return _boot("lenslib/tiny-llama", hf_model, tokenizer, device, dtype)


def tiny_hf_model(*, seed: int = 0):
    """The Hugging Face model and tokenizer behind :func:`tiny_model` (same seed, same weights)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    tokenizer_dir = resources.files("lenslib") / "data" / "tiny-tokenizer"
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    config = LlamaConfig(
        vocab_size=TINY_SIZES["d_vocab"],
        hidden_size=TINY_SIZES["d_model"],
        intermediate_size=64,
        num_hidden_layers=TINY_SIZES["n_layers"],
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=TINY_SIZES["n_ctx"],
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=0.5,  # peaked, non-uniform next-token distributions
        architectures=["LlamaForCausalLM"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        # A non-trivial final-norm weight, so a lens that skips or repeats it gives other numbers.
        with torch.no_grad():
            hf_model.model.norm.weight.uniform_(0.5, 1.5)
    return hf_model, tokenizer


def random_control(
    name: str, *, seed: int = 0, device: str | None = None, dtype: torch.dtype = torch.float32
) -> "TransformerBridge":
    """A bundled model's architecture and tokenizer with freshly initialised random weights.

    Example:
        >>> import lenslib
        >>> control = lenslib.random_control("smollm2-135m", seed=0)   # doctest: +SKIP
        >>> lenslib.logit_lens(control, "The capital of France is")   # doctest: +SKIP

    Args:
        name: a bundled model name, e.g. ``"smollm2-135m"``.
        seed: torch seed for the initialisation.

    Uses the same config (layers, widths, vocabulary) and the library's default initialisation,
    so the lens of the control shows what the architecture alone produces.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if name not in BUNDLED:
        raise InputError(f"random_control takes a bundled model name ({', '.join(BUNDLED)}), got {name!r}")
    directory = hf_model_dir(name)
    config = AutoConfig.from_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        hf_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return _boot(BUNDLED[name].hub_name, hf_model, tokenizer, device or default_device(), dtype)
