"""An independent logit lens from Hugging Face alone: hidden states -> final norm -> lm_head.

Shares nothing with lenslib or TransformerLens but the weights: the model runs its own forward
pass with ``output_hidden_states=True``, every statistic is computed in float64 on the full
vocabulary (fine for the short prompts of the tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
from numerics import logit_error


@dataclass
class Reference:
    """Float64 statistics, each ``[layer, pos]`` (``log_probs`` is ``[layer, pos, vocab]``), of
    the float32 logits of ``rows`` (``[layer, pos, d_model]``, what ``lm_head`` decoded)."""

    log_probs: torch.Tensor
    entropy: torch.Tensor
    kl_to_final: torch.Tensor
    model_logits: torch.Tensor  # [pos, vocab], the model's own
    rows: torch.Tensor

    def as_result(self, target_ids: torch.Tensor, k: int) -> SimpleNamespace:
        """The fields of a :class:`lenslib.LensResult` for ``target_ids`` ``[pos]`` (-1: none),
        computed from these float64 log-probabilities, for ``numerics.assert_lens_agrees``."""
        top = self.log_probs.topk(k, dim=-1)
        has = (target_ids >= 0).view(1, -1).expand(self.log_probs.shape[0], -1)
        safe = target_ids.clamp_min(0).view(1, -1, 1).expand(self.log_probs.shape[0], -1, 1)
        logprob = self.log_probs.gather(-1, safe).squeeze(-1)
        rank = (self.log_probs > logprob.unsqueeze(-1)).sum(-1) + 1
        return SimpleNamespace(
            top_ids=top.indices, top_probs=top.values.exp(), entropy=self.entropy, kl_to_final=self.kl_to_final,
            target_ids=target_ids, target_logprob=torch.where(has, logprob, torch.nan),
            target_prob=torch.where(has, logprob.exp(), torch.nan), target_rank=torch.where(has, rank, 0),
        )


def final_norm(hf_model) -> torch.nn.Module:
    return hf_model.model.norm


@torch.no_grad()
def reference_lens(hf_model, input_ids: torch.Tensor) -> Reference:
    out = hf_model(input_ids.view(1, -1), output_hidden_states=True)
    hidden = [h[0] for h in out.hidden_states]  # embeddings, then each block's output
    norm, head = final_norm(hf_model), hf_model.lm_head
    # transformers applies the final norm to the last hidden state it returns; detect rather
    # than assume, so a change of convention fails loudly below instead of skewing the layer.
    # Normed, the two are float32 products of the same rows: within twice numerics' step-1 bound.
    W_U = head.weight.T
    same = (head(hidden[-1]) - out.logits[0]).abs().max() <= 2 * logit_error(hidden[-1], W_U, head.bias).max()
    rows = torch.stack([norm(h) for h in hidden[:-1]] + [hidden[-1] if same else norm(hidden[-1])])
    stacked = head(rows).double()
    cap = getattr(hf_model.config, "final_logit_softcapping", None)
    if cap:
        stacked = torch.tanh(stacked / cap) * cap
    log_probs = stacked.log_softmax(-1)
    probs = log_probs.exp()
    entropy = -(probs * log_probs).sum(-1)
    kl = (probs[-1] * (log_probs[-1] - log_probs)).sum(-1)
    return Reference(log_probs, entropy, kl, out.logits[0].double(), rows)


@torch.no_grad()
def reference_attribution(hf_model, input_ids: torch.Tensor, target: int, versus=None):
    """Direct logit attribution from Hugging Face modules alone, projected in float64.

    What each decoder layer writes into the stream is read from forward hooks on its own
    modules: the attention output (Gemma: after ``post_attention_layernorm``) and the MLP output
    (Gemma: after ``post_feedforward_layernorm``); the embeddings are ``hidden_states[0]``. The
    final norm's gain is taken from the architecture's formula (Llama ``weight``, Gemma
    ``1 + weight``), its scale frozen at the last position.

    Returns:
        ``(labels, contributions [component] float64, constant, total, parts)``; ``total`` is the
        model's own final logit (difference); ``parts`` ``[component, d_model]`` what each
        component wrote at the last position (float32 values, as float64).
    """
    layers = hf_model.model.layers
    gemma = hasattr(layers[0], "post_feedforward_layernorm")
    written: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(_module, _inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            written[name] = out[0, -1].double()
        return hook

    handles = []
    for l, layer in enumerate(layers):
        attn = layer.post_attention_layernorm if gemma else layer.self_attn
        mlp = layer.post_feedforward_layernorm if gemma else layer.mlp
        handles += [attn.register_forward_hook(keep(f"{l}_attn")), mlp.register_forward_hook(keep(f"{l}_mlp"))]
    try:
        out = hf_model(input_ids.view(1, -1), output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    labels = ["embed"] + [f"{l}_{k}" for l in range(len(layers)) for k in ("attn", "mlp")]
    parts = torch.stack([out.hidden_states[0][0, -1].double()] + [written[name] for name in labels[1:]])
    x = parts.sum(0)
    norm = final_norm(hf_model)
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps")
    gain = norm.weight.double() + (1.0 if gemma else 0.0)
    scale = (x.pow(2).mean() + eps).sqrt()
    w_u = hf_model.lm_head.weight.double()  # [vocab, d_model]
    direction = w_u[target] - (w_u[versus] if versus is not None else 0.0)
    bias = hf_model.lm_head.bias
    constant = 0.0 if bias is None else float(bias[target] - (bias[versus] if versus is not None else 0.0))
    contributions = parts @ (gain * direction) / scale
    logits = out.logits[0, -1].double()
    total = float(logits[target] - (logits[versus] if versus is not None else 0.0))
    return labels, contributions, constant, total, parts
