"""A bundled model's weights as plain Hugging Face files: de-quantised once, then cached.

``AutoModelForCausalLM.from_pretrained(hf_model_dir("smollm2-135m"))`` loads the same weights
:func:`lenslib.load_model` wraps. The first call de-quantises the GGUF (tens of seconds on a
CPU) into the lenslib cache (:mod:`lenslib.models.cache`); later calls only check the cache.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from lenslib.errors import InputError
from lenslib.models import cache as model_cache
from lenslib.models.catalog import BUNDLED, BundledModel, installed_version
from lenslib.models.tokenizer_files import compact_bpe_merges


def hf_model_dir(name: str, *, full_check: bool = False) -> Path:
    """The cache directory holding a bundled model as plain Hugging Face files (built if needed).

    ``AutoModelForCausalLM.from_pretrained(hf_model_dir("smollm2-135m"))`` loads the same
    de-quantised weights that :func:`load_model` wraps; the reference tests use this.
    ``full_check`` re-hashes every file even if untouched since it was verified.
    """
    if name not in BUNDLED:
        raise InputError(f"{name!r} is not a bundled model; bundled: {', '.join(BUNDLED)}")
    model = BUNDLED[name]
    return model_cache.ensure_entry(
        model.cache_entry, lambda out: _dequantise(model, out), full_check=full_check
    )


def _dequantise(model: BundledModel, out: Path) -> dict:
    """Write the de-quantised fp32 model and tokenizer of ``model`` into ``out``."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = tqdm(total=4, desc=f"lenslib: first load of {model.name}, de-quantising", unit="step")
    started = time.perf_counter()
    gguf = model.locate(model, out)
    steps.update()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    steps.update()
    hf_model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    steps.update()
    # The GGUF-derived config names no architecture (TransformerLens needs one) and marks the
    # model quantised, which save_pretrained refuses; the weights in memory are plain floats.
    hf_model.config.architectures = [model.architecture]
    hf_model.hf_quantizer = None
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    hf_model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    compact_bpe_merges(out / "tokenizer.json")  # the same tokenizer, faster to parse
    if gguf.parent == out:
        gguf.unlink()
    steps.update()
    steps.close()
    return {
        "model": model.name,
        "package": f"{model.package}=={installed_version(model.package)}",
        "seconds_to_build": round(time.perf_counter() - started, 1),
    }


