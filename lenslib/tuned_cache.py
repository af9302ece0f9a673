"""Fitted tuned lenses, cached like the de-quantised models (see :mod:`lenslib.model_cache`).

An entry is keyed by the model's cache entry, the corpus id and a hash of the recipe, e.g.
``tuned-smollm2-135m-0.1.2-f3-fortunes-1a2b3c4d5e6f-r0123abcd``. It holds the tuned lens
(``translators.safetensors``, ``record.json`` with the held-out scores) and the least-squares
lens it started from (``least_squares-*``). It is built in a temporary directory and renamed
into place (an interrupted fit leaves nothing a later load accepts); a damaged entry is
rebuilt with a :class:`~lenslib.model_cache.DamagedCacheWarning`.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Optional

from lenslib.tuned_fit import DEFAULT_RECIPE
from lenslib.tuned_lens import TunedLens

LS_PREFIX = "least_squares-"


def recipe_key(recipe: dict) -> str:
    """8 hex digits of the recipe's canonical JSON."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]


def entry_name(name: str, recipe: dict) -> str:
    """The cache entry of a tuned lens for model ``name`` fitted with ``recipe`` on the corpus."""
    from lenslib.corpus import corpus_id
    from lenslib.models import BUNDLED

    model_entry = BUNDLED[name].cache_entry if name in BUNDLED else name
    return f"tuned-{model_entry}-{corpus_id()}-r{recipe_key(recipe)}"


def fitted_lens(
    name: str, *, model=None, recipe: Optional[dict] = None, least_squares: bool = False,
    progress: bool = True,
) -> TunedLens:
    """The tuned lens for model ``name``, fitted on the corpus and cached; fitted if missing.

    Args:
        name: a bundled model name (or ``"tiny-llama"``).
        model: the loaded model (loaded on demand, only when a fit is needed).
        recipe: overrides of :data:`lenslib.tuned_fit.DEFAULT_RECIPE`.
        least_squares: return the least-squares start instead of the refined lens.

    The record (``lens.record``) holds the corpus, recipe, fit times and, per layer, the
    full-vocabulary held-out scores of the logit lens, the least-squares start and the tuned
    lens.
    """
    from lenslib import model_cache

    recipe = {**DEFAULT_RECIPE, **(recipe or {})}
    loaded = {"model": model}

    def get_model():
        if loaded["model"] is None:
            from lenslib.models import load_model

            loaded["model"] = load_model(name)
        return loaded["model"]

    directory = model_cache.ensure_entry(
        entry_name(name, recipe), lambda out: _build(name, get_model(), recipe, out, progress)
    )
    lens = TunedLens.load(directory, prefix=LS_PREFIX if least_squares else "")
    if model is not None:
        lens.check_model(model)
    return lens


def _build(name: str, model, recipe: dict, out: Path, progress: bool) -> dict:
    from lenslib import corpus
    from lenslib.lens_eval import evaluate_lens
    from lenslib.tuned_fit import collect_residuals, fit_tuned_lens

    started = time.perf_counter()
    fit_texts = corpus.split_texts(model.tokenizer, "fit", recipe["fit_tokens"] + recipe["select_tokens"],
                                   seq_len=recipe["seq_len"], seed=recipe["seed"])
    fit_texts, select_texts = _split_tail(model, fit_texts, recipe["select_tokens"])
    held_texts = corpus.split_texts(model.tokenizer, "heldout", recipe["heldout_tokens"], seq_len=recipe["seq_len"], seed=recipe["seed"])
    tuned, start = fit_tuned_lens(model, fit_texts, recipe=recipe, progress=progress, select_texts=select_texts)
    fitted = time.perf_counter()
    held_texts = _first_tokens(model, held_texts, recipe["score_tokens"])
    held = collect_residuals(model, held_texts, incl_mid=recipe["incl_mid"], progress=progress, desc="held-out residuals")
    scores = evaluate_lens(model, {"logit": None, "least_squares": start, "tuned": tuned}, held, progress=progress)
    evaluated = time.perf_counter()
    record = {
        "model": name,
        "corpus": {"id": corpus.corpus_id(), "source": corpus.SOURCE, "licence": corpus.LICENCE,
                   "split": f"by document, 1 in {corpus.HELDOUT_EVERY} held out (hash of file/index)",
                   "fit_windows": len(fit_texts), "heldout_windows": len(held_texts),
                   "heldout_tokens_in_split": recipe["heldout_tokens"],
                   "heldout_tokens_scored": scores.n_tokens},
        "heldout": scores.table.to_dict(orient="records"),
        "heldout_mean_kl_nats_but_last": {k: scores.mean_kl(k) for k in ("logit", "least_squares", "tuned")},
        "seconds": {"fit": fitted - started, "heldout_scores": evaluated - fitted},
    }
    tuned.record = {**tuned.record, **record}
    start.record = {**start.record, **record}
    tuned.save(out)
    start.save(out, prefix=LS_PREFIX)
    return {"model": name, "recipe": recipe, "corpus": record["corpus"]["id"]}


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
