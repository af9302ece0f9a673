"""The result of one logit-lens run: what each layer predicts at each chosen position."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor


@dataclass
class LensResult:
    """Logit-lens statistics for one prompt. All tensors live on the CPU.

    Example:
        >>> import lenslib
        >>> result = lenslib.logit_lens(lenslib.load_model("tiny-llama"), "abc", k=2)
        >>> result.top_ids.shape, result.entropy.shape        # [layer, pos, k], [layer, pos]
        (torch.Size([3, 4, 2]), torch.Size([3, 4]))
        >>> list(result.to_frame().columns[:4])
        ['layer', 'layer_label', 'position', 'input_token']

    ``layer`` runs over ``layer_labels`` (TransformerLens's ``accumulated_resid`` labels:
    ``"0_pre"`` is the embeddings, ``"{l}_pre"`` the input of block ``l``, ``"{l}_mid"`` the
    stream after block ``l``'s attention when ``incl_mid=True``, ``"final_post"`` the last
    block's output, i.e. the model's own prediction). ``pos`` runs over ``positions``, indices
    into ``input_ids``. Each layer is decoded as ``unembed(ln_final(resid))`` with the final
    norm's statistics recomputed for that layer, then the model's own logit transform if any.
    Information quantities are in nats.

    Attributes:
        input_ids: ``[n_tokens]`` the tokens actually run, BOS included.
        str_tokens: the same tokens as strings.
        positions: ``[pos]`` the positions the statistics are for.
        layer_labels: one label per layer.
        top_ids, top_probs: ``[layer, pos, k]`` the k most probable next tokens, most likely first.
        top_tokens: ``top_tokens[layer][pos][j]`` is the string of ``top_ids[layer, pos, j]``.
        entropy: ``[layer, pos]`` entropy of the layer's next-token distribution (nats).
        kl_to_final: ``[layer, pos]`` KL(final || layer) in nats; 0 at the final layer.
        target_ids: ``[pos]`` the tracked token per position, -1 where there is none (the last
            position, when the target is the next input token).
        target_prob, target_logprob: ``[layer, pos]`` its probability and log-probability (NaN
            where there is no target).
        target_rank: ``[layer, pos]`` its rank, 1 = top-1 (0 where there is no target).
        target_tokens: the tracked token's string per position ("" where there is none).
        target_label: how the target was chosen (``"next token"`` or the token's string).
        forward_path: which forward pass gave the residual stream: ``"sdpa"`` (the Hugging Face
            decoder layers with fused attention, :mod:`lenslib.core.forward`) or ``"bridge"``
            (``run_with_cache``, the bridge's eager attention).
    """

    input_ids: Int[Tensor, "n_tokens"]
    str_tokens: list[str]
    positions: Int[Tensor, "pos"]
    layer_labels: list[str]
    top_ids: Int[Tensor, "layer pos k"]
    top_probs: Float[Tensor, "layer pos k"]
    top_tokens: list[list[list[str]]]
    entropy: Float[Tensor, "layer pos"]
    kl_to_final: Float[Tensor, "layer pos"]
    target_ids: Int[Tensor, "pos"]
    target_prob: Float[Tensor, "layer pos"]
    target_logprob: Float[Tensor, "layer pos"]
    target_rank: Int[Tensor, "layer pos"]
    target_tokens: list[str]
    target_label: str = "next token"
    model_name: str = field(default="", repr=False)
    forward_path: str = field(default="bridge", repr=False)

    @property
    def n_layers(self) -> int:
        """Number of lens layers (``len(layer_labels)``)."""
        return len(self.layer_labels)

    def to_dict(self) -> dict:
        """Every field as plain Python lists and numbers (NaN becomes None), for JSON."""
        import math

        def plain(value):
            if isinstance(value, Tensor):
                value = value.tolist()
            if isinstance(value, float) and math.isnan(value):
                return None
            if isinstance(value, list):
                return [plain(v) for v in value]
            return value

        return {name: plain(getattr(self, name)) for name in self.__dataclass_fields__}

    def to_frame(self):
        """A tidy ``pandas.DataFrame``: one row per layer x position x top-k rank.

        Columns: ``layer`` (index), ``layer_label``, ``position``, ``input_token``, ``k_rank``
        (1 = top), ``token_id``, ``token``, ``prob``, ``entropy`` and ``kl_to_final`` (nats),
        ``target_id``, ``target_prob``, ``target_logprob``, ``target_rank``.
        """
        import pandas as pd

        n_layer, n_pos, k = self.top_ids.shape
        layer = torch.arange(n_layer).view(-1, 1, 1).expand(n_layer, n_pos, k)
        pos_index = torch.arange(n_pos).view(1, -1, 1).expand(n_layer, n_pos, k)
        k_rank = torch.arange(1, k + 1).view(1, 1, -1).expand(n_layer, n_pos, k)
        per_cell = lambda t: t.unsqueeze(-1).expand(n_layer, n_pos, k).reshape(-1).numpy()  # noqa: E731
        positions = self.positions[pos_index.reshape(-1)]
        return pd.DataFrame(
            {
                "layer": layer.reshape(-1).numpy(),
                "layer_label": [self.layer_labels[i] for i in layer.reshape(-1).tolist()],
                "position": positions.numpy(),
                "input_token": [self.str_tokens[i] for i in positions.tolist()],
                "k_rank": k_rank.reshape(-1).numpy(),
                "token_id": self.top_ids.reshape(-1).numpy(),
                "token": [t for layer_ in self.top_tokens for row in layer_ for t in row],
                "prob": self.top_probs.reshape(-1).numpy(),
                "entropy": per_cell(self.entropy),
                "kl_to_final": per_cell(self.kl_to_final),
                "target_id": per_cell(self.target_ids.view(1, -1).expand(n_layer, n_pos)),
                "target_prob": per_cell(self.target_prob),
                "target_logprob": per_cell(self.target_logprob),
                "target_rank": per_cell(self.target_rank),
            }
        )

    def __str__(self) -> str:
        """The last chosen position, one line per layer: top-3 tokens, entropy, target rank."""
        col = self.positions.numel() - 1
        pos = int(self.positions[col])
        target = int(self.target_ids[col])
        head = (
            f"logit lens{f' of {self.model_name}' if self.model_name else ''} at position {pos} "
            f"(input {self.str_tokens[pos]!r}; {self.positions.numel()} position(s) computed)\n"
            f"target: {self.target_label if target >= 0 else 'none at this position'}\n"
        )
        lines = [f"{'layer':>10}  {'top-3 (prob)':<48} {'entropy':>8} {'rank':>6}"]
        for i, label in enumerate(self.layer_labels):
            top = ", ".join(
                f"{tok!r} {float(p):.2f}"
                for tok, p in zip(self.top_tokens[i][col][:3], self.top_probs[i, col, :3])
            )
            rank = str(int(self.target_rank[i, col])) if target >= 0 else "-"
            lines.append(f"{label:>10}  {top:<48.48} {float(self.entropy[i, col]):8.2f} {rank:>6}")
        return head + "\n".join(lines)
