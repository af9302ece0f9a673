"""lenslib: the logit lens on TransformerLens, memory-bounded and checked against Hugging Face.

>>> import lenslib
>>> model = lenslib.load_model("tiny-llama")
>>> result = lenslib.logit_lens(model, "Hello there", k=3)
>>> result.top_probs.shape          # [layer, pos, k]: embeddings + 2 blocks, BOS + 11 chars
torch.Size([3, 12, 3])

Importing lenslib loads no model and does no work; heavy libraries load on first use.
"""

from lenslib.lens import LensResult, logit_lens
from lenslib.models import ModelNotAvailableError, list_models, load_model
from lenslib.random_models import random_control

__all__ = [
    "LensResult",
    "ModelNotAvailableError",
    "list_models",
    "load_model",
    "logit_lens",
    "random_control",
]
