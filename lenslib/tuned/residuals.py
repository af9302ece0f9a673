"""Raw residual streams of many texts, kept for fitting and scoring translators.

>>> import lenslib
>>> from lenslib.tuned.residuals import collect_residuals
>>> model = lenslib.load_model("tiny-llama")
>>> resid = collect_residuals(model, ["abc", "hello"], progress=False)
>>> resid.raw.shape         # [layer, token, d_model]: 3 entries; 3 + 5 tokens after BOS
torch.Size([3, 8, 32])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lenslib.core.bridge import residual_hooks
from lenslib.core.forward import residual_cache
from lenslib.core.tokens import pad_batch, tokenize
from lenslib.errors import InputError


@dataclass
class Residuals:
    """Raw residual streams at the real, non-BOS positions of some texts.

    Attributes:
        raw: ``[layer, token, d_model]`` every ``accumulated_resid`` entry, un-normalised; the
            last is ``"final_post"``.
        labels: their labels.
        next_ids: ``[token]`` the next input token, -1 at each window's last position.
        text_ids: ``[token]`` the index of the text each token comes from (for resampling by
            text, e.g. :meth:`lenslib.LensEvaluation.bootstrap_kl`); ``None`` when unknown.
    """

    raw: Float[Tensor, "layer token d_model"]
    labels: list[str]
    next_ids: Int[Tensor, "token"]
    text_ids: Optional[Int[Tensor, "token"]] = None

    @property
    def n_tokens(self) -> int:
        return self.raw.shape[1]


@torch.no_grad()
def collect_residuals(
    model, texts: Sequence[str], *, incl_mid: bool = False, batch_size: int = 8,
    progress: bool = True, desc: str = "residuals",
) -> Residuals:
    """Run ``model`` over ``texts`` (BOS prepended) and keep the raw residual streams.

    The BOS position is dropped: its stream is an outlier (an attention sink) that no lens is
    asked about, and it would dominate a least-squares fit.
    """
    from tqdm.auto import tqdm

    if not texts:
        raise InputError("no texts given: pass a list of strings to run the model on")
    device = model.W_U.device
    hooks = residual_hooks(int(model.cfg.n_layers), incl_mid)
    parts, next_parts, text_parts, labels = [], [], [], None
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch", disable=not progress):
        tokens = [tokenize(model, t, prepend_bos=True, what=f"text {start + i} {t[:40]!r}...")
                  for i, t in enumerate(texts[start:start + batch_size])]
        batch, mask = pad_batch(model, tokens)
        cache, _ = residual_cache(model, batch.to(device), hooks, attention_mask=mask.to(device))
        stack, labels = cache.accumulated_resid(apply_ln=False, incl_mid=incl_mid, return_labels=True)
        del cache
        for row, ids in enumerate(tokens):
            n = ids.numel()
            if n < 2:
                continue
            parts.append(stack[:, row, 1:n].float().cpu().clone())
            next_parts.append(torch.cat([ids[2:n], torch.tensor([-1])]))
            text_parts.append(torch.full((n - 1,), start + row, dtype=torch.long))
    if not parts:
        raise InputError("the texts hold no token after BOS")
    return Residuals(torch.cat(parts, dim=1), list(labels), torch.cat(next_parts), torch.cat(text_parts))


def final_norm(model, x: Float[Tensor, "row d_model"]) -> Float[Tensor, "row d_model"]:
    """The model's ``ln_final`` on rows, as ``apply_ln_to_stack(recompute_ln=True)`` applies it."""
    return model.ln_final(x.unsqueeze(0))[0]
