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
>>> from lenslib.causal.patching import patch_layers
>>> model = lenslib.load_model("tiny-llama")
>>> result = patch_layers(model, "abcab", "abdab", target="c", metric="logit")
>>> result.restored.shape            # [layer, pos]: 2 blocks + final, BOS + 5 characters
torch.Size([3, 6])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Optional, Sequence, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lenslib.core import bridge
from lenslib.core.bridge import last_logits_only
from lenslib.core.tokens import Decoder, Token, resolve_positions, token_id, tokenize
from lenslib.errors import InputError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

METRICS = ("prob", "logit", "logit_diff")


@dataclass
class PatchResult:
    """What patching each layer (or component) x position gives: the residual stream here
    (:func:`patch_layers`), attention, MLP or head outputs in
    :func:`lenslib.causal.components.patch_components`.

    Rows are what was patched (``layer_labels``), columns the positions patched.

    Attributes:
        restored: ``[row, pos]`` where the patched run lies between the two runs,
            ``(patched - corrupt) / (clean - corrupt)``: 0 = the corrupt run's metric, 1 = the
            clean run's. Denoising (clean activations into the corrupt run) starts at 0;
            noising (corrupt activations into the clean run) starts at 1. See :attr:`effect`.
        metric: ``[row, pos]`` the raw metric of each patched run.
        metric_name: ``"prob"`` (the answer's probability at the last position), ``"logit"``
            (its logit) or ``"logit_diff"`` (``logit(answer) - logit(versus)``).
        clean_value, corrupt_value: the metric on the unpatched clean and corrupt runs.
        layer_labels: one label per row: ``"{l}_pre"`` / ``"final_post"`` (residual stream),
            ``"{l}_attn"``, ``"{l}_mlp"``, ``"{l}_attn_h{h}"`` (one head).
        positions: ``[pos]`` the patched positions (indices into the tokens, BOS included).
        clean_tokens, corrupt_tokens: the two prompts' tokens as strings.
        target_token, versus_token: the tokens measured.
        model_name: the model's name.
        site: ``"resid"``, ``"attn"``, ``"mlp"`` or ``"head"``: what each row patches.
        direction: ``"denoising"`` (clean into corrupt) or ``"noising"`` (corrupt into clean).
        block: per row, the block patched (for ``"resid"``: the stream entering it;
            ``n_layers`` = the last block's output). Empty on results made before these fields.
        head: per row, the head patched (-1 where the row is not one head).
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
    target_token: str
    versus_token: Optional[str] = None
    model_name: str = field(default="", repr=False)
    site: str = "resid"
    direction: str = "denoising"
    block: list[int] = field(default_factory=list)
    head: list[int] = field(default_factory=list)

    @property
    def effect(self) -> Float[Tensor, "row pos"]:
        """``[row, pos]`` the share of the clean - corrupt difference a patch accounts for:
        denoising, ``restored`` (how much the clean activation brings back); noising,
        ``1 - restored = (clean - patched) / (clean - corrupt)`` (how much the corrupt
        activation takes away). 0 = no effect, 1 = the whole difference, either way."""
        return self.restored if self.direction == "denoising" else 1 - self.restored

    def to_frame(self):
        """A tidy ``pandas.DataFrame``: one row per patched row x position (``layer`` = row
        index, ``layer_label``, ``block``, ``head`` (-1: not a head), ``position``,
        ``clean_token``, ``corrupt_token``, ``metric``, ``restored``, ``effect``)."""
        import pandas as pd

        effect = self.effect
        rows = []
        for i, label in enumerate(self.layer_labels):
            for j, pos in enumerate(self.positions.tolist()):
                rows.append({"layer": i, "layer_label": label,
                             "block": self.block[i] if self.block else i, "head": self.head[i] if self.head else -1,
                             "position": pos,
                             "clean_token": self.clean_tokens[pos], "corrupt_token": self.corrupt_tokens[pos],
                             "metric": float(self.metric[i, j]), "restored": float(self.restored[i, j]),
                             "effect": float(effect[i, j])})
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        """Every field as plain Python values, for JSON (with ``effect``)."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name in ("restored", "metric", "positions"):
            out[name] = out[name].tolist()
        out["effect"] = self.effect.tolist()
        return out

    def __str__(self) -> str:
        """The metric on both runs, the patch with the largest effect, and the effect per row there."""
        layer, pos, best = self.best()
        column = self.positions.tolist().index(pos)
        what = repr(self.target_token) + (f" vs {self.versus_token!r}" if self.versus_token else "")
        how = "clean into corrupt" if self.direction == "denoising" else "corrupt into clean"
        verb = "restores" if self.direction == "denoising" else "removes"
        site = {"resid": "residual stream", "attn": "attention outputs", "mlp": "MLP outputs",
                "head": "head outputs (hook_z)"}.get(self.site, self.site)
        lines = [f"patching{f' of {self.model_name}' if self.model_name else ''}, {site}, {how} ({self.direction}), "
                 f"{self.metric_name} of {what}: clean {self.clean_value:.4g}, corrupt {self.corrupt_value:.4g}",
                 f"largest effect: {layer}, position {pos} ({self.clean_tokens[pos]!r}) {verb} {best:.1%}",
                 f"{'restored' if self.direction == 'denoising' else 'removed'} fraction per row at that position:"]
        effect = self.effect
        order = range(len(self.layer_labels))
        if len(self.layer_labels) > 40:  # e.g. every head: the 20 largest
            order = sorted(order, key=lambda i: -abs(float(effect[i, column])))[:20]
            lines[-1] += " (the 20 largest)"
        lines += [f"  {self.layer_labels[i]:<14} {float(effect[i, column]):+.3f}" for i in order]
        return "\n".join(lines)

    def best(self) -> tuple[str, int, float]:
        """``(row label, position, effect)`` of the patch with the largest :attr:`effect` (for
        denoising: the one that restores most)."""
        effect = self.effect
        flat = int(effect.argmax())
        layer, pos = divmod(flat, effect.shape[1])
        return self.layer_labels[layer], int(self.positions[pos]), float(effect[layer, pos])

    def by_head(self, position: Optional[int] = None) -> Float[Tensor, "layer head"]:
        """``[block, head]`` the :attr:`effect` of each head at one patched position (default:
        the last one patched), for ``site="head"`` results. Rows are the patched blocks in
        order (``sorted(set(self.block))``).

        Raises:
            InputError: not a per-head result, or a position that was not patched.
        """
        if self.site != "head" or not self.head:
            raise InputError(f"by_head needs a result of site='head', this one is site={self.site!r}")
        column = self.column_of(position)
        n_heads = max(self.head) + 1
        layers = sorted(set(self.block))
        grid = torch.full((len(layers), n_heads), float("nan"))
        effect = self.effect
        for i, (block, head) in enumerate(zip(self.block, self.head)):
            grid[layers.index(block), head] = effect[i, column]
        return grid

    def column_of(self, position: Optional[int]) -> int:
        """The column of ``position`` in ``restored`` (``None``: the last patched position)."""
        patched = self.positions.tolist()
        if position is None:
            return len(patched) - 1
        n = len(self.clean_tokens)
        if not -n <= position < n or position % n not in patched:
            raise InputError(f"position {position} was not patched; the patched positions are {patched}")
        return patched.index(position % n)


def patch_layers(
    model: "TransformerBridge",
    clean: str,
    corrupt: str,
    *,
    target: Token,
    versus: Optional[Token] = None,
    metric: Optional[str] = None,
    positions: Union[None, str, Sequence[int]] = None,
    batch_size: int = 32,
    skip_no_ops: bool = True,
    prepend_bos: Optional[bool] = None,
) -> PatchResult:
    """Patch the clean residual stream into the corrupt run, one layer x position at a time.

    Each patched run replaces ``blocks.{l}.hook_resid_pre`` (or the last block's
    ``hook_resid_post`` for ``"final_post"``) at one position by the clean run's value, then
    measures the target at the last position. ``batch_size`` patched runs share one forward pass
    (the corrupt prompt repeated); only the clean residuals at the patched hooks are kept
    (``[layer, pos, d_model]``), so memory stays that of a forward pass of ``batch_size`` rows.

    The fraction restored is ``(patched - corrupt) / (clean - corrupt)`` of the metric: 0 =
    nothing, 1 = all of it (denoising: clean activations patched into the corrupt run).

    Args:
        model: a ``TransformerBridge``.
        clean: the prompt whose answer is ``target``.
        corrupt: a prompt of the same number of tokens (e.g. another subject).
        target: the answer token (a string of one token, or an id).
        versus: a second token; the default metric becomes ``logit(target) - logit(versus)``
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
        InputError: prompts of different token lengths (the message shows both tokenizations),
            a target of several tokens or none, a bad metric, a clean run where the metric equals
            the corrupt run's (nothing to restore; raised before any patch runs).
    """
    target_id, versus_id, metric = patch_inputs(model, clean, corrupt, target, versus, metric)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    decode = Decoder(model.tokenizer)
    clean_ids, corrupt_ids = same_length_tokens(model, clean, corrupt, prepend_bos, decode)
    chosen = resolve_positions(None if positions == "all" else positions, clean_ids.numel())
    hooks = patch_hooks(int(model.cfg.n_layers))

    def measure(logits: Tensor) -> Tensor:
        return metric_value(logits[:, -1].double(), metric, target_id, versus_id)

    with torch.no_grad():
        clean_value, clean_resid = _run_and_keep(model, clean_ids, hooks, measure)
        corrupt_value, corrupt_resid = _run_and_keep(model, corrupt_ids, hooks, measure)
        if clean_value == corrupt_value:
            raise InputError(
                f"the {metric} is the same on the clean and the corrupt run ({clean_value:.4g}): there "
                "is nothing to restore; pick a corrupt prompt that changes the answer."
            )
        patches = [(layer, int(pos)) for layer in range(len(hooks)) for pos in chosen]
        values = torch.full((len(patches),), corrupt_value, dtype=torch.float64)
        todo = [i for i, (layer, pos) in enumerate(patches)
                if not skip_no_ops or not _is_no_op(layer, pos, clean_resid, corrupt_resid)]
        if todo:
            values[todo] = run_patched(model, corrupt_ids, clean_resid, [patches[i] for i in todo], hooks,
                                       measure, batch_size)
    raw = values.view(len(hooks), chosen.numel()).float()
    return PatchResult(
        restored=((raw.double() - corrupt_value) / (clean_value - corrupt_value)).float(),
        metric=raw,
        metric_name=metric,
        clean_value=clean_value,
        corrupt_value=corrupt_value,
        layer_labels=[f"{l}_pre" for l in range(len(hooks) - 1)] + ["final_post"],
        positions=chosen,
        clean_tokens=decode.each(clean_ids.tolist()),
        corrupt_tokens=decode.each(corrupt_ids.tolist()),
        target_token=decode.one(target_id),
        versus_token=None if versus_id is None else decode.one(versus_id),
        model_name=bridge.model_name(model),
        block=list(range(len(hooks))),
        head=[-1] * len(hooks),
    )


def patch_inputs(
    model, clean: str, corrupt: str, target: Token, versus: Optional[Token], metric: Optional[str]
) -> tuple[int, Optional[int], str]:
    """What every patching function checks first: two non-empty prompts, the target's and
    ``versus``'s token ids, and the metric (default ``"prob"``, ``"logit_diff"`` with ``versus``).

    Raises:
        InputError: an empty prompt, a bad token, an unknown metric, or ``"logit_diff"`` without
            ``versus``.
    """
    for name, text in (("clean", clean), ("corrupt", corrupt)):
        if not isinstance(text, str) or not text:
            raise InputError(f"the {name} prompt must be a non-empty string, got {text!r}")
    target_id = token_id(model, target, "target")
    versus_id = None if versus is None else token_id(model, versus, "versus")
    metric = metric or ("prob" if versus_id is None else "logit_diff")
    check_metric(metric, versus_id)
    return target_id, versus_id, metric


def check_metric(metric: str, versus_id: Optional[int]) -> None:
    """Raise :class:`InputError` for a metric lenslib does not know, or ``"logit_diff"`` without
    a token to compare with."""
    if metric not in METRICS:
        raise InputError(f"metric must be one of {METRICS}, got {metric!r}")
    if metric == "logit_diff" and versus_id is None:
        raise InputError("metric 'logit_diff' needs versus=, the token to compare the target with")


def same_length_tokens(model, clean: str, corrupt: str, prepend_bos, decode: Decoder) -> tuple[Tensor, Tensor]:
    """Both prompts' tokens, or an error showing both tokenizations when their lengths differ."""
    clean_ids = tokenize(model, clean, prepend_bos)
    corrupt_ids = tokenize(model, corrupt, prepend_bos)
    if clean_ids.numel() != corrupt_ids.numel():
        raise InputError(
            f"the clean and corrupt prompts must have the same number of tokens to patch position "
            f"by position; clean has {clean_ids.numel()} {decode.each(clean_ids.tolist())}, corrupt "
            f"has {corrupt_ids.numel()} {decode.each(corrupt_ids.tolist())}. Reword one of them "
            "(e.g. a subject of the same token length)."
        )
    return clean_ids, corrupt_ids


def patch_hooks(n_layers: int) -> list[str]:
    """The residual hooks patched, one per lens layer: ``hook_resid_pre`` of each block and the
    last block's ``hook_resid_post``."""
    return [f"blocks.{l}.hook_resid_pre" for l in range(n_layers)] + [f"blocks.{n_layers - 1}.hook_resid_post"]


def _run_and_keep(model, ids: Tensor, hooks: list[str], measure) -> tuple[float, Tensor]:
    """The metric of an unpatched run and its ``[layer, pos, d_model]`` stream at ``hooks``."""
    logits, cache = model.run_with_cache(
        ids.view(1, -1).to(model.W_U.device), names_filter=hooks, **last_logits_only(model))
    return float(measure(logits)), torch.stack([cache[name][0] for name in hooks])


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
    device = model.W_U.device
    last_only = last_logits_only(model)
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


def _is_no_op(layer: int, pos: int, clean: Tensor, corrupt: Tensor) -> bool:
    """Whether patching ``(layer, pos)`` provably changes nothing (see ``skip_no_ops``)."""
    if layer == clean.shape[0] - 1 and pos != clean.shape[1] - 1:
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


def metric_value(last_logits: Tensor, metric: str, target: int, versus: Optional[int]) -> Tensor:
    """``[batch]`` the metric from ``[batch, d_vocab]`` last-position logits (float64):
    ``"prob"`` = ``softmax(logits)[target]``, ``"logit"`` = ``logits[target]``,
    ``"logit_diff"`` = ``logits[target] - logits[versus]``."""
    if metric == "prob":
        return last_logits.softmax(-1)[:, target]
    if metric == "logit":
        return last_logits[:, target]
    return last_logits[:, target] - last_logits[:, versus]
