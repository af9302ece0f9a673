"""An independent logit lens from Hugging Face alone: hidden states -> final norm -> lm_head.

Shares nothing with lenslib or TransformerLens but the weights: the model runs its own forward
pass with ``output_hidden_states=True``, every statistic is computed in float64 on the full
vocabulary (fine for the short prompts of the tests).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Reference:
    """Float64 statistics, each ``[layer, pos]`` (``log_probs`` is ``[layer, pos, vocab]``)."""

    log_probs: torch.Tensor
    entropy: torch.Tensor
    kl_to_final: torch.Tensor
    model_logits: torch.Tensor  # [pos, vocab], the model's own


def final_norm(hf_model) -> torch.nn.Module:
    return hf_model.model.norm


@torch.no_grad()
def reference_lens(hf_model, input_ids: torch.Tensor) -> Reference:
    out = hf_model(input_ids.view(1, -1), output_hidden_states=True)
    hidden = [h[0] for h in out.hidden_states]  # embeddings, then each block's output
    norm, head = final_norm(hf_model), hf_model.lm_head
    # transformers applies the final norm to the last hidden state it returns; detect rather
    # than assume, so a change of convention fails loudly below instead of skewing the layer.
    last_is_normed = torch.allclose(head(hidden[-1]), out.logits[0], atol=1e-4)
    logits = [head(norm(h)) for h in hidden[:-1]]
    logits.append(head(hidden[-1] if last_is_normed else norm(hidden[-1])))
    stacked = torch.stack(logits).double()
    cap = getattr(hf_model.config, "final_logit_softcapping", None)
    if cap:
        stacked = torch.tanh(stacked / cap) * cap
    log_probs = stacked.log_softmax(-1)
    probs = log_probs.exp()
    entropy = -(probs * log_probs).sum(-1)
    kl = (probs[-1] * (log_probs[-1] - log_probs)).sum(-1)
    return Reference(log_probs, entropy, kl, out.logits[0].double())
