"""Activation patching of the residual stream: does the model use what the lens reads at a layer?

Causal tracing in the style of Meng et al. 2022 (https://arxiv.org/abs/2202.05262), with the
residual stream as the patched state: run a *corrupt* prompt (e.g. another subject), and at one
layer and one position replace its residual stream by the *clean* prompt's. If the answer comes
back, the information at that layer and position is enough to produce it.

Layers follow the lens (``"0_pre"`` = the embeddings entering block 0, ``"{l}_pre"`` = the
stream entering block ``l``, ``"final_post"`` = the last block's output). Patching
``"{l}_pre"`` at every position at once gives back the clean run exactly (everything after it is
recomputed from clean inputs); patching nothing gives the corrupt run.

>>> import lenslib
>>> from lenslib.patching import patch_layers
>>> model = lenslib.load_model("tiny-llama")
>>> result = patch_layers(model, "abcab", "abdab", "c", metric="logit")
>>> result.restored.shape            # [layer, pos]: 2 blocks + final, BOS + 5 characters
torch.Size([3, 6])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Optional, Sequence, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

METRICS = ("prob", "logit", "logit_diff")


@dataclass
class PatchResult:
    """What patching each layer x position of the clean run into the corrupt run gives back.

    Attributes:
        restored: ``[layer, pos]`` the fraction restored,
            ``(patched - corrupt) / (clean - corrupt)``: 0 = nothing, 1 = all of it.
        metric: ``[layer, pos]`` the raw metric of each patched run.
        metric_name: ``"prob"`` (the answer's probability at the last position), ``"logit"``
            (its logit) or ``"logit_diff"`` (``logit(answer) - logit(versus)``).
        clean_value, corrupt_value: the metric on the unpatched clean and corrupt runs.
        layer_labels: one label per layer (see the module docstring).
        positions: ``[pos]`` the patched positions (indices into the tokens, BOS included).
        clean_tokens, corrupt_tokens: the two prompts' tokens as strings.
        answer_token, versus_token: the tokens measured.
        model_name: the model's name.
    """

    restored: Float[Tensor, "layer pos"]
    metric: Float[Tensor, "layer pos"]
    metric_name: str
    clean_value: float
    corrupt_value: float
    layer_labels: list[str]
    positions: Int[Tensor, "pos"]
    clean_tokens: list[str]
    corrupt_tokens: list[str]
    answer_token: str
    versus_token: Optional[str] = None
    model_name: str = field(default="", repr=False)

    def to_frame(self):
        """A tidy ``pandas.DataFrame``: one row per layer x position (``layer_label``,
        ``position``, ``clean_token``, ``corrupt_token``, ``metric``, ``restored``)."""
        import pandas as pd

        rows = []
        for i, label in enumerate(self.layer_labels):
            for j, pos in enumerate(self.positions.tolist()):
                rows.append({"layer": i, "layer_label": label, "position": pos,
                             "clean_token": self.clean_tokens[pos], "corrupt_token": self.corrupt_tokens[pos],
                             "metric": float(self.metric[i, j]), "restored": float(self.restored[i, j])})
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        """Every field as plain Python values, for JSON."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name in ("restored", "metric", "positions"):
            out[name] = out[name].tolist()
        return out

    def best(self) -> tuple[str, int, float]:
        """``(layer label, position, restored fraction)`` of the patch that restores most."""
        flat = int(self.restored.argmax())
        layer, pos = divmod(flat, self.restored.shape[1])
        return self.layer_labels[layer], int(self.positions[pos]), float(self.restored[layer, pos])


def patch_layers(
    model: "TransformerBridge",
    clean: str,
    corrupt: str,
    answer: Union[str, int],
    *,
    versus: Union[None, str, int] = None,
    metric: Optional[str] = None,
    positions: Union[None, str, Sequence[int]] = None,
    batch_size: int = 32,
    skip_no_ops: bool = True,
    prepend_bos: Optional[bool] = None,
) -> PatchResult:
    """Patch the clean residual stream into the corrupt run, one layer x position at a time.

    Each patched run replaces ``blocks.{l}.hook_resid_pre`` (or the last block's
    ``hook_resid_post`` for ``"final_post"``) at one position by the clean run's value, then
    measures the answer at the last position. ``batch_size`` patched runs share one forward pass
    (the corrupt prompt repeated); only the clean residuals at the patched hooks are kept
    (``[layer, pos, d_model]``), so memory stays that of a forward pass of ``batch_size`` rows.

    Args:
        model: a ``TransformerBridge``.
        clean: the prompt whose answer is ``answer``.
        corrupt: a prompt of the same number of tokens (e.g. another subject).
        answer: the answer token (string of one token, or id).
        versus: a second token; the default metric becomes ``logit(answer) - logit(versus)``
            (e.g. the corrupt prompt's own answer).
        metric: ``"prob"`` (default without ``versus``), ``"logit"`` or ``"logit_diff"``
            (default with ``versus``).
        positions: ``None``/``"all"`` (every position) or a list of positions to patch.
        batch_size: patched runs per forward pass.
        skip_no_ops: do not run patches that provably change nothing, and give them the corrupt
            run's value: a position where the clean and corrupt streams are already identical
            (before the first differing token), and ``"final_post"`` at any position but the
            last (the last block's output elsewhere never reaches the last position's logits).
            ``False`` runs them too (the tests check both agree).
        prepend_bos: prepend BOS; ``None`` uses the model's default.

    Returns:
        A :class:`PatchResult`, ``[n_layers + 1, pos]``.

    Raises:
        ValueError: prompts of different token lengths (the message shows both tokenizations),
            an answer of several tokens or none, a bad metric, a clean run where the metric equals
            the corrupt run's (nothing to restore).
    """
    from lenslib.attribution import token_id
    from lenslib.lens import _Decoder, _forward_kwargs, _resolve_positions, _tokenize

    for name, text in (("clean", clean), ("corrupt", corrupt)):
        if not isinstance(text, str) or not text:
            raise ValueError(f"the {name} prompt must be a non-empty string, got {text!r}")
    answer_id = token_id(model, answer, "answer")
    versus_id = None if versus is None else token_id(model, versus, "versus")
    metric = metric or ("prob" if versus_id is None else "logit_diff")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if metric == "logit_diff" and versus_id is None:
        raise ValueError("metric 'logit_diff' needs versus=, the token to compare the answer with")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    clean_ids = _tokenize(model, clean, prepend_bos)
    corrupt_ids = _tokenize(model, corrupt, prepend_bos)
    decode = _Decoder(model.tokenizer)
    if clean_ids.numel() != corrupt_ids.numel():
        raise ValueError(
            f"the clean and corrupt prompts must have the same number of tokens to patch position "
            f"by position; clean has {clean_ids.numel()} {decode.each(clean_ids.tolist())}, corrupt "
            f"has {corrupt_ids.numel()} {decode.each(corrupt_ids.tolist())}. Reword one of them "
            "(e.g. a subject of the same token length)."
        )
    chosen = _resolve_positions(None if positions == "all" else positions, clean_ids.numel())
    n_layers = int(model.cfg.n_layers)
    hooks = [f"blocks.{l}.hook_resid_pre" for l in range(n_layers)]
    hooks.append(f"blocks.{n_layers - 1}.hook_resid_post")

    def measure(logits: Tensor) -> Tensor:
        return _metric(logits[:, -1].double(), metric, answer_id, versus_id)

    device = model.W_U.device
    with torch.no_grad():
        last_only = _forward_kwargs(model)  # the metric needs the last position's logits only
        clean_logits, cache = model.run_with_cache(
            clean_ids.view(1, -1).to(device), names_filter=hooks, **last_only
        )
        clean_resid = torch.stack([cache[name][0] for name in hooks])  # [layer, pos, d_model]
        del cache
        clean_value = float(measure(clean_logits))
        corrupt_logits, cache = model.run_with_cache(
            corrupt_ids.view(1, -1).to(device), names_filter=hooks, **last_only
        )
        corrupt_resid = torch.stack([cache[name][0] for name in hooks])
        del cache
        corrupt_value = float(measure(corrupt_logits))
        patches = [(layer, int(pos)) for layer in range(len(hooks)) for pos in chosen]
        values = torch.full((len(patches),), corrupt_value, dtype=torch.float64)
        todo = [
            i for i, (layer, pos) in enumerate(patches)
            if not skip_no_ops or not _is_no_op(layer, pos, clean_resid, corrupt_resid, n_layers)
        ]
        if todo:
            picked = [patches[i] for i in todo]
            values[todo] = run_patched(model, corrupt_ids, clean_resid, picked, hooks, measure, batch_size)
    if clean_value == corrupt_value:
        raise ValueError(
            f"the {metric} is the same on the clean and the corrupt run ({clean_value:.4g}): there "
            "is nothing to restore; pick a corrupt prompt that changes the answer."
        )
    raw = values.view(len(hooks), chosen.numel()).float()
    return PatchResult(
        restored=((raw.double() - corrupt_value) / (clean_value - corrupt_value)).float(),
        metric=raw,
        metric_name=metric,
        clean_value=clean_value,
        corrupt_value=corrupt_value,
        layer_labels=[f"{l}_pre" for l in range(n_layers)] + ["final_post"],
        positions=chosen,
        clean_tokens=decode.each(clean_ids.tolist()),
        corrupt_tokens=decode.each(corrupt_ids.tolist()),
        answer_token=decode.one(answer_id),
        versus_token=None if versus_id is None else decode.one(versus_id),
        model_name=str(getattr(model.cfg, "model_name", "")),
    )


def run_patched(
    model,
    corrupt_ids: Int[Tensor, "pos"],
    clean_resid: Float[Tensor, "layer pos d_model"],
    patches: Sequence[Iterable],
    hooks: Sequence[str],
    measure,
    batch_size: int = 32,
) -> Tensor:
    """Run the corrupt prompt once per patch; return ``measure(logits)`` per patch.

    Args:
        corrupt_ids: the corrupt tokens.
        clean_resid: ``[layer, pos, d_model]`` the clean stream at each hook of ``hooks``.
        patches: one entry per run: ``(layer, pos)`` patches one position; ``(layer, None)``
            every position of that layer; an empty tuple ``()`` nothing.
        hooks: the hook name of each layer index.
        measure: ``logits [batch, pos, d_vocab] -> [batch]``.
        batch_size: runs per forward pass.
    """
    from lenslib.lens import _forward_kwargs

    device = model.W_U.device
    last_only = _forward_kwargs(model)
    out = []
    for start in range(0, len(patches), batch_size):
        group = list(patches[start : start + batch_size])
        by_layer: dict[int, list[tuple[int, Optional[int]]]] = {}
        for row, patch in enumerate(group):
            if patch:
                layer, pos = patch
                by_layer.setdefault(layer, []).append((row, pos))
        fwd_hooks = [(hooks[layer], _patch_hook(clean_resid[layer], rows)) for layer, rows in by_layer.items()]
        tokens = corrupt_ids.view(1, -1).expand(len(group), -1).to(device)
        logits = model.run_with_hooks(tokens, fwd_hooks=fwd_hooks, **last_only)
        out.append(measure(logits).cpu())
    return torch.cat(out)


def _is_no_op(layer: int, pos: int, clean: Tensor, corrupt: Tensor, n_layers: int) -> bool:
    if layer == n_layers and pos != clean.shape[1] - 1:
        return True
    return bool(torch.equal(clean[layer, pos], corrupt[layer, pos]))


def _patch_hook(clean: Tensor, rows: list[tuple[int, Optional[int]]]):
    def hook(activation: Tensor, hook=None) -> Tensor:
        patched = activation.clone()
        for row, pos in rows:
            if pos is None:
                patched[row] = clean.to(patched.dtype)
            else:
                patched[row, pos] = clean[pos].to(patched.dtype)
        return patched

    return hook


def _metric(last_logits: Tensor, metric: str, answer: int, versus: Optional[int]) -> Tensor:
    """``[batch]`` the metric from ``[batch, d_vocab]`` last-position logits (float64)."""
    if metric == "prob":
        return last_logits.softmax(-1)[:, answer]
    if metric == "logit":
        return last_logits[:, answer]
    return last_logits[:, answer] - last_logits[:, versus]
