"""Fitted tuned lenses, cached like the de-quantised models (see :mod:`lenslib.models.cache`).

An entry is keyed by the model's cache entry, the corpus id and a hash of the recipe, e.g.
``tuned-smollm2-135m-0.1.2-f3-fortunes-1a2b3c4d5e6f-r0123abcd``. It holds the tuned lens
(``translators.safetensors``, ``record.json`` with the held-out scores) and the least-squares
lens it started from (``least_squares-*``). It is built in a temporary directory and renamed
into place (an interrupted fit leaves nothing a later load accepts); a damaged entry is
rebuilt with a :class:`~lenslib.models.cache.DamagedCacheWarning`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Union

from lenslib.models import cache as model_cache
from lenslib.models.catalog import BUNDLED, bundled_name_of
from lenslib.tuned import corpus
from lenslib.tuned.evaluate import evaluate_lens
from lenslib.tuned.fit import fit_tuned_lens
from lenslib.tuned.recipe import FitRecipe
from lenslib.tuned.residuals import collect_residuals
from lenslib.tuned.translators import TunedLens

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

LS_PREFIX = "least_squares-"


def entry_name(name: str, recipe: FitRecipe) -> str:
    """The cache entry of a tuned lens for model ``name`` fitted with ``recipe`` on the corpus."""
    model_entry = BUNDLED[name].cache_entry if name in BUNDLED else name
    return f"tuned-{model_entry}-{corpus.corpus_id()}-r{recipe.key()}"


def tuned_lens(
    model: Union[str, "TransformerBridge"],
    *,
    recipe: Union[None, FitRecipe, Mapping] = None,
    least_squares: bool = False,
    progress: bool = True,
) -> TunedLens:
    """The tuned lens of a bundled model, fitted on the corpus once and cached.

    >>> import lenslib
    >>> model = lenslib.load_model("smollm2-135m")        # doctest: +SKIP
    >>> lens = lenslib.tuned_lens(model)                   # doctest: +SKIP
    >>> lenslib.logit_lens(model, "The capital of France is", lens=lens)  # doctest: +SKIP

    Args:
        model: a loaded bundled model (or ``"tiny-llama"``), or its name; with a name the model
            is loaded only if the lens must be fitted.
        recipe: a :class:`~lenslib.tuned.recipe.FitRecipe` or a dict of overrides of the default.
        least_squares: return the least-squares start instead of the refined lens.
        progress: show progress bars while fitting.

    Returns:
        A :class:`TunedLens`. Its ``record`` holds the corpus, recipe, fit times and, per layer,
        full-vocabulary held-out scores of the logit lens, the least-squares start and the
        tuned lens. The first call for a model fits it (minutes on a CPU); later calls read
        the cache.

    Raises:
        InputError: a model that is not bundled (fit one with :func:`fit_tuned_lens`).
        CorpusNotAvailableError: the fitting text is not installed (needed only to fit).
    """
    loaded = None if isinstance(model, str) else model
    name = model if isinstance(model, str) else bundled_name_of(model)
    recipe = FitRecipe.of(recipe)

    def get_model():
        nonlocal loaded
        if loaded is None:
            from lenslib.models.loading import load_model

            loaded = load_model(name)
        return loaded

    directory = model_cache.ensure_entry(
        entry_name(name, recipe), lambda out: _build(name, get_model(), recipe, out, progress)
    )
    lens = TunedLens.load(directory, prefix=LS_PREFIX if least_squares else "")
    if loaded is not None:
        lens.check_model(loaded)
    return lens


def _build(name: str, model, recipe: FitRecipe, out: Path, progress: bool) -> dict:
    started = time.perf_counter()
    fit_texts = corpus.split_texts(model.tokenizer, "fit", recipe.fit_tokens + recipe.select_tokens,
                                   seq_len=recipe.seq_len, seed=recipe.seed)
    fit_texts, select_texts = _split_tail(model, fit_texts, recipe.select_tokens)
    held_texts = corpus.split_texts(model.tokenizer, "heldout", recipe.heldout_tokens, seq_len=recipe.seq_len, seed=recipe.seed)
    fit = fit_tuned_lens(model, fit_texts, recipe=recipe, progress=progress, select_texts=select_texts)
    tuned, start = fit.tuned, fit.least_squares
    fitted = time.perf_counter()
    held_texts = _first_tokens(model, held_texts, recipe.score_tokens)
    held = collect_residuals(model, held_texts, incl_mid=recipe.incl_mid, progress=progress, desc="held-out residuals")
    scores = evaluate_lens(model, {"logit": None, "least_squares": start, "tuned": tuned}, held, progress=progress)
    evaluated = time.perf_counter()
    record = {
        "model": name,
        "corpus": {"id": corpus.corpus_id(), "source": corpus.SOURCE, "licence": corpus.LICENCE,
                   "split": f"by document, 1 in {corpus.HELDOUT_EVERY} held out (hash of file/index)",
                   "fit_windows": len(fit_texts), "heldout_windows": len(held_texts),
                   "heldout_tokens_in_split": recipe.heldout_tokens,
                   "heldout_tokens_scored": scores.n_tokens},
        "heldout": scores.table.to_dict(orient="records"),
        "heldout_mean_kl_nats_but_last": {k: scores.mean_kl(k) for k in ("logit", "least_squares", "tuned")},
        "seconds": {"fit": fitted - started, "heldout_scores": evaluated - fitted},
    }
    tuned.record = {**tuned.record, **record}
    start.record = {**start.record, **record}
    tuned.save(out)
    start.save(out, prefix=LS_PREFIX)
    return {"model": name, "recipe": recipe.to_dict(), "corpus": record["corpus"]["id"]}


def _split_tail(model, texts: list[str], n_tokens: int) -> tuple[list[str], list[str]]:
    """``(head, tail)``: the last windows of ``texts`` that hold ``n_tokens`` tokens are the
    tail (the per-layer selection's validation text; whole windows, so whole documents)."""
    if n_tokens <= 0:
        return texts, []
    total, cut = 0, len(texts)
    while cut > 1 and total < n_tokens:
        cut -= 1
        total += len(model.tokenizer.encode(texts[cut], add_special_tokens=False))
    return texts[:cut], texts[cut:]


def _first_tokens(model, texts: list[str], n_tokens: int) -> list[str]:
    """The first windows of ``texts`` that hold ``n_tokens`` tokens (full-vocabulary scoring
    costs ``layers x tokens x d_model x d_vocab`` per lens: the held-out split is scored on a
    prefix of it)."""
    kept, total = [], 0
    for text in texts:
        if total >= n_tokens:
            break
        kept.append(text)
        total += len(model.tokenizer.encode(text, add_special_tokens=False))
    return kept
