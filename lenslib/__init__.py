"""lenslib: the logit lens on TransformerLens, memory-bounded and checked against Hugging Face.

>>> import lenslib
>>> model = lenslib.load_model("tiny-llama")
>>> result = lenslib.logit_lens(model, "Hello there", k=3)
>>> result.top_probs.shape          # [layer, pos, k]: embeddings + 2 blocks, BOS + 11 chars
torch.Size([3, 12, 3])

Importing lenslib loads no model and does no work; heavy libraries load on first use.
"""

from lenslib.attribution import Attribution, attribute
from lenslib.lens import LensResult, logit_lens
from lenslib.models import ModelNotAvailableError, list_models, load_model
from lenslib.patching import PatchResult, patch_layers
from lenslib.random_models import random_control

__all__ = [
    "Attribution",
    "LensResult",
    "ModelNotAvailableError",
    "PatchResult",
    "attribute",
    "list_models",
    "load_model",
    "logit_lens",
    "patch_layers",
    "random_control",
]
