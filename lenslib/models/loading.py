"""Where models come from: the two bundled real models, a tiny random one, and the hub.

>>> model = load_model("smollm2-135m")          # doctest: +SKIP
>>> model.cfg.n_layers, model.cfg.d_model        # doctest: +SKIP
(30, 576)

Bundled models ship inside packages on the package index as 4-bit-quantised GGUF files, so
they load with no network. Their first load de-quantises the GGUF (tens of seconds to minutes
on a CPU) and caches plain safetensors (see :mod:`lenslib.models.cache`);
every later load reads the cache in seconds. Results approximate the original models.

Any other name goes to ``TransformerBridge.boot_transformers``, which downloads from the
Hugging Face hub; offline, it fails at once with :class:`ModelNotAvailableError`.
"""

from __future__ import annotations

import socket
import warnings
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import torch

from lenslib.core.gc_pause import collection_paused
from lenslib.errors import InputError, ModelNotAvailableError
from lenslib.models.catalog import BUNDLED, TINY_MODEL_NAME, BundledModel, model_names
from lenslib.models.placement import resolve_placement
from lenslib.models.random_weights import tiny_model
from lenslib.models.tokenizer_files import load_cached_tokenizer
from lenslib.models.weights import hf_model_dir

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


def load_model(
    name: str,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    device_map: str | dict | None = None,
    n_devices: int | None = None,
) -> "TransformerBridge":
    """Load a model as a ``TransformerBridge`` ready for ``run_with_cache``.

    Example:
        >>> import lenslib
        >>> model = lenslib.load_model("tiny-llama")         # bundled ones: "smollm2-135m", "gemma-3-270m"
        >>> model.cfg.n_layers, model.cfg.d_model, model.cfg.d_vocab
        (2, 32, 64)

    Args:
        name: ``"smollm2-135m"`` or ``"gemma-3-270m"`` (bundled, offline; see
            :func:`list_models`), ``"tiny-llama"`` (a 2-layer random model for tests and
            demos), or any name ``TransformerBridge.boot_transformers`` accepts (needs the hub).
        device: ``"cpu"``, ``"cuda"``, ...; default: CUDA when available, else CPU.
        dtype: weight dtype, e.g. ``torch.float32`` (default) or ``torch.bfloat16`` (half the
            memory; the lens still reduces its statistics in float32, see :mod:`lenslib.core.stats`).
        device_map: a Hugging Face device map (``"auto"``, ``"balanced"``, or a dict such as
            ``{"": "cuda:0"}``) to spread a model too large for one GPU over several; not with
            ``device``. See :mod:`lenslib.models.placement`.
        n_devices: split the model over this many CUDA devices (accelerate's balanced map).

    Raises:
        ModelNotAvailableError: a bundled model's package is missing, or a hub name cannot be
            fetched (offline). The message says what to do.
    """
    # tqdm.auto falls back to text bars in notebooks without ipywidgets; its warning says nothing.
    warnings.filterwarnings("ignore", message="IProgress not found")
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"model name must be a non-empty string, got {name!r}; try {model_names()}")
    placement = resolve_placement(device, device_map, n_devices)
    if name == TINY_MODEL_NAME:
        if placement.device_map is not None:
            raise InputError("tiny-llama is built in memory on one device: pass device=..., not device_map / n_devices")
        model = tiny_model(device=placement.device, dtype=dtype)
    elif name in BUNDLED:
        model = _load_bundled(BUNDLED[name], placement=placement, dtype=dtype)
    else:
        model = _load_from_hub(name, placement=placement, dtype=dtype)
    return model.eval()  # TransformerLens's own analysis tools refuse a model in training mode


def _load_bundled(model: BundledModel, *, placement, dtype: torch.dtype) -> "TransformerBridge":
    directory = hf_model_dir(model.name)  # de-quantises on the first load, else checks the cache
    # Loading allocates millions of objects (imports, the tokenizer, TransformerLens's hook
    # scan) and frees almost none; the collector's full passes over them are pure overhead.
    with collection_paused():
        from transformer_lens.model_bridge import TransformerBridge
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        tokenizer = load_cached_tokenizer(directory)
        bars_were_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # reading cached safetensors takes a second: no bar
        try:
            hf_model = AutoModelForCausalLM.from_pretrained(
                directory, dtype=dtype, **placement.from_pretrained_kwargs()
            )
        finally:
            if bars_were_on:  # leave the user's own setting as it was
                hf_logging.enable_progress_bar()
        return TransformerBridge.boot_transformers(
            model.hub_name, hf_model=hf_model, tokenizer=tokenizer, dtype=dtype,
            **placement.boot_kwargs(preloaded=True),
        )


def hub_is_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within ``timeout`` seconds."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _in_local_hub_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def _load_from_hub(name: str, *, placement, dtype: torch.dtype) -> "TransformerBridge":
    if not _in_local_hub_cache(name) and not hub_is_reachable():
        raise ModelNotAvailableError(
            f"{name!r} is not a bundled model, so it would come from the Hugging Face hub, "
            "which cannot be reached from here (offline, or HF_HUB_OFFLINE is set). "
            f"Use a bundled model instead ({model_names()}), or run where the hub is reachable."
        )
    from transformer_lens.model_bridge import TransformerBridge

    try:
        return TransformerBridge.boot_transformers(name, dtype=dtype, **placement.boot_kwargs(preloaded=False))
    except OSError as error:
        raise ModelNotAvailableError(
            f"Could not load {name!r} from the Hugging Face hub: {error}\n"
            f"Check the name (e.g. 'gpt2', 'google/gemma-3-270m'), or use a bundled model: {model_names()}."
        ) from error
