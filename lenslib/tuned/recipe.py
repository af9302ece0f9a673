"""How a tuned lens is fitted: one frozen set of numbers, hashed into the cache key.

>>> from lenslib.tuned.recipe import FitRecipe
>>> recipe = FitRecipe().replace(steps=100)
>>> recipe.steps, recipe.lr, FitRecipe().key() != recipe.key()
(100, 0.001, True)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Mapping, Union

from lenslib.errors import InputError


@dataclass(frozen=True)
class FitRecipe:
    """The tuned lens's fitting recipe (see :mod:`lenslib.tuned.fit` for what each step does).

    Attributes:
        fit_tokens: fitting-split tokens for least squares (and the refinement's pool).
        refine_tokens: tokens of those whose final distribution the KL refinement uses.
        select_tokens: validation tokens (fitting split, not fitted on) for the per-layer choice.
        heldout_tokens: held-out-split tokens drawn for scoring.
        score_tokens: of those, tokens scored over the full vocabulary when the lens is cached.
        seq_len: tokens per fitting window.
        ridge: least-squares ridge, as a fraction of the mean eigenvalue of the covariance.
        steps: Adam steps of the KL refinement.
        batch_tokens: tokens per Adam step.
        lr: Adam step size for the layers before relative depth ``late_from``.
        late_lr: the step size from relative depth ``late_from`` on.
        late_from: relative depth (``layer / n_layers``) where ``late_lr`` starts.
        top_k: final-distribution top tokens kept exactly in the truncated KL.
        sample: vocabulary columns sampled for the rest of the truncated KL.
        seed: seed of every random draw of the fit (a local generator: the global RNG is untouched).
        incl_mid: also fit translators for the ``_mid`` entries.
    """

    fit_tokens: int = 32768
    refine_tokens: int = 8192
    select_tokens: int = 256
    heldout_tokens: int = 10240
    score_tokens: int = 512
    seq_len: int = 128
    ridge: float = 1e-3
    steps: int = 300
    batch_tokens: int = 64
    lr: float = 1e-3
    late_lr: float = 3e-4
    late_from: float = 0.6
    top_k: int = 64
    sample: int = 8192
    seed: int = 0
    incl_mid: bool = False

    def replace(self, **changes) -> "FitRecipe":
        """A copy with ``changes``; an unknown name raises :class:`~lenslib.errors.InputError`."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            names = ", ".join(f.name for f in dataclasses.fields(self))
            raise InputError(f"unknown recipe setting(s) {unknown}; a FitRecipe has: {names}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Every setting, for JSON."""
        return dataclasses.asdict(self)

    def key(self) -> str:
        """8 hex digits of the recipe's canonical JSON: part of the tuned lens's cache entry."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:8]

    @classmethod
    def of(cls, recipe: Union[None, "FitRecipe", Mapping]) -> "FitRecipe":
        """A recipe from ``None`` (the default), a ``FitRecipe``, or a mapping of overrides."""
        if recipe is None:
            return cls()
        if isinstance(recipe, FitRecipe):
            return recipe
        if isinstance(recipe, Mapping):
            return cls().replace(**recipe)
        raise InputError(f"recipe must be a FitRecipe or a dict of overrides, got {type(recipe).__name__}")


DEFAULT_RECIPE = FitRecipe()
