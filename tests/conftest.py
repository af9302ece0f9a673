"""Shared fixtures: the tiny random model for unit tests, the bundled models for a few others.

The tiny model is built once per session; its sizes are asserted so a misspelled config can
never silently build something large. The real models load from the lenslib cache (``make
test`` provisions it first).
"""

from __future__ import annotations

import warnings

import pytest
import torch

import lenslib
from lenslib.models.random_weights import TINY_SIZES

warnings.filterwarnings("ignore", message=".*torch_dtype.*")


@pytest.fixture(scope="session")
def tiny():
    model = lenslib.load_model("tiny-llama", device="cpu")
    assert model.cfg.n_layers == TINY_SIZES["n_layers"] == 2
    assert model.cfg.d_model == TINY_SIZES["d_model"] == 32
    assert model.cfg.d_vocab == TINY_SIZES["d_vocab"] == 64
    assert sum(p.numel() for p in model.parameters()) < 50_000
    return model


@pytest.fixture(scope="session")
def tiny_hf():
    """A second, independent instance of the tiny model's Hugging Face weights (same seed)."""
    from lenslib.models.random_weights import tiny_hf_model

    return tiny_hf_model(seed=0)[0]


@pytest.fixture(scope="session")
def tiny_hf64():
    """The tiny model's Hugging Face weights in float64, an instance of its own: tests that need a
    float64 reference use this, so no test casts the shared ``tiny_hf`` and must restore it."""
    from lenslib.models.random_weights import tiny_hf_model

    return tiny_hf_model(seed=0)[0].double()


def _real(name: str):
    return lenslib.load_model(name, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="session")
def smollm2():
    return _real("smollm2-135m")


@pytest.fixture(scope="session")
def gemma():
    return _real("gemma-3-270m")


@pytest.fixture(scope="session")
def smollm2_hf():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(lenslib.models.loading.hf_model_dir("smollm2-135m"))


@pytest.fixture(scope="session")
def gemma_hf():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(lenslib.models.loading.hf_model_dir("gemma-3-270m"))
