"""lenslib: the logit lens on TransformerLens, memory-bounded and checked against Hugging Face.

>>> import lenslib
>>> model = lenslib.load_model("tiny-llama")
>>> result = lenslib.logit_lens(model, "Hello there", k=3)
>>> result.top_probs.shape          # [layer, pos, k]: embeddings + 2 blocks, BOS + 11 chars
torch.Size([3, 12, 3])

The package, from the bottom up (imports only go down):

* ``lenslib.core``: tokens and positions, the bridge's hooks, the residual forward, the tiled
  full-vocabulary statistics and their kernels;
* ``lenslib.models``: the bundled models, their cache, a tiny random model, the hub;
* ``lenslib.lens``: :func:`logit_lens`, :class:`LensResult`, answers of several tokens,
  :func:`compare`;
* ``lenslib.tuned``: the tuned lens (:class:`TunedLens`, :func:`fit_tuned_lens`,
  :func:`tuned_lens`, :func:`evaluate_lens`);
* ``lenslib.causal``: :func:`attribute`, :func:`patch_layers` (the residual stream),
  :func:`patch_components` (attention, MLP and head outputs), :func:`component_lens` and
  :func:`attention_patterns`;
* ``lenslib.recall``: the factual-recall prompts and :func:`run_recall`;
* ``lenslib.plotting``: figures and circuitsvis views; ``lenslib.reports``: HTML pages;
  ``lenslib.cli``: the ``lenslib`` command.

Importing lenslib loads no model and does no work; heavy libraries load on first use.
"""

from lenslib import plotting  # noqa: E402  (figures: lenslib.plotting.lens_grid(...))
from lenslib.causal.attention import AttentionPatterns, attention_patterns, heads_that_matter
from lenslib.causal.attribution import Attribution, attribute
from lenslib.causal.component_lens import ComponentLens, component_lens
from lenslib.causal.components import patch_components
from lenslib.causal.patching import PatchResult, patch_layers
from lenslib.errors import (
    CorpusNotAvailableError,
    InputError,
    LenslibError,
    LensMismatchError,
    ModelNotAvailableError,
    NotEnoughTextError,
)
from lenslib.lens.compare import Comparison, compare
from lenslib.lens.logit_lens import logit_lens
from lenslib.lens.result import LensResult
from lenslib.models.catalog import list_models
from lenslib.models.loading import load_model
from lenslib.models.random_weights import random_control
from lenslib.recall.analysis import RecallRun, run_recall
from lenslib.recall.dataset import RecallItem, load_recall_dataset
from lenslib.tuned.cache import tuned_lens
from lenslib.tuned.evaluate import LensEvaluation, evaluate_lens
from lenslib.tuned.fit import TunedLensFit, fit_tuned_lens
from lenslib.tuned.recipe import FitRecipe
from lenslib.tuned.translators import TunedLens

__all__ = [
    "AttentionPatterns",
    "Attribution",
    "Comparison",
    "ComponentLens",
    "CorpusNotAvailableError",
    "FitRecipe",
    "InputError",
    "LensEvaluation",
    "LensMismatchError",
    "LensResult",
    "LenslibError",
    "ModelNotAvailableError",
    "NotEnoughTextError",
    "PatchResult",
    "RecallItem",
    "RecallRun",
    "TunedLens",
    "TunedLensFit",
    "attention_patterns",
    "attribute",
    "compare",
    "component_lens",
    "evaluate_lens",
    "fit_tuned_lens",
    "heads_that_matter",
    "list_models",
    "load_model",
    "load_recall_dataset",
    "logit_lens",
    "patch_components",
    "patch_layers",
    "plotting",
    "random_control",
    "run_recall",
    "tuned_lens",
]
