"""Where an activation is patched, and the batched forward passes that patch it.

The engine under :func:`lenslib.causal.components.patch_components`: record two unpatched runs
(every site's activation), then run the *base* prompt many times at once, each row with some of
its activations replaced by the *source* run's.

A :class:`Patch` names one activation, by site, block ``layer``, position ``pos`` (``None``: every
position) and, for heads, ``head``:

* ``"resid"``: the residual stream entering block ``layer`` (``blocks.{l}.hook_resid_pre``);
  ``layer = n_layers`` is the last block's output (``blocks.{L-1}.hook_resid_post``).
* ``"attn"``: block ``layer``'s attention output as added to the residual stream
  (``blocks.{l}.hook_attn_out`` = ``hook_resid_mid - hook_resid_pre``; on Gemma 3, after its
  post-attention RMSNorm).
* ``"mlp"``: block ``layer``'s MLP output as added to the stream (``blocks.{l}.hook_mlp_out`` =
  ``hook_resid_post - hook_resid_mid``; on Gemma 3, after its post-feed-forward RMSNorm).
* ``"head"``: one head's output before the output projection (``blocks.{l}.attn.hook_z[..., h, :]``,
  the columns ``h * d_head : (h + 1) * d_head`` of ``o_proj``'s input).

Two forward paths give the same numbers up to float rounding (the tests hold them together):

* ``"sdpa"``: the Hugging Face decoder layers with fused attention
  (:func:`lenslib.core.forward.sdpa_shadow`, no weight copied) and hooks on their modules.
  Causal attention means a patch at block ``l`` and position ``p`` changes nothing below block
  ``l`` and nothing before position ``p``. So a batch of runs whose patches all lie at blocks
  ``>= l0`` and positions ``>= p0`` starts at block ``l0`` from the base run's stream and
  recomputes only positions ``p0..``, reading the base run's cached keys and values for the
  positions before ``p0``. Runs are grouped by their first block, and within it split by first
  position so that the tokens recomputed stay few (:func:`plan_batches`).
* ``"bridge"``: TransformerLens's own hooks on the bridge (eager attention), a whole forward
  pass per batch. Used where the SDPA shadow is not exact (see
  :func:`lenslib.core.forward.sdpa_unavailable_reason`) or when asked for.

>>> import lenslib
>>> from lenslib.causal.sites import Patch, Readout, record, run_patches
>>> model = lenslib.load_model("tiny-llama")
>>> readout = Readout(model, "logit", target=model.to_single_token("c"))
>>> clean, corrupt = (record(model, model.to_tokens(t)[0], readout) for t in ("abcab", "abdab"))
>>> every_block = [tuple(Patch(site, l) for l in range(2) for site in ("attn", "mlp"))]
>>> restored = run_patches(model, corrupt, clean, every_block, readout)   # every output, every position
>>> abs(float(restored[0]) - clean.value) < 1e-4                          # gives the clean run back
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lenslib.causal.patching import check_metric
from lenslib.core.bridge import last_logits_only, output_transform, unembed
from lenslib.core.forward import FORWARD_CHOICES, sdpa_shadow, sdpa_unavailable_reason
from lenslib.core.stats import lens_stats
from lenslib.errors import InputError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

SITES = ("resid", "attn", "mlp", "head")

# The fixed cost of one forward pass, in recomputed tokens: what a batch split must save to pay.
FORWARD_OVERHEAD_TOKENS = 8


@dataclass(frozen=True)
class Patch:
    """One activation to replace: ``site`` at block ``layer``, position ``pos`` (``None``: every
    position), head ``head`` (site ``"head"`` only). See the module docstring for the sites."""

    site: str
    layer: int
    pos: Optional[int] = None
    head: Optional[int] = None

    def __post_init__(self):
        if self.site not in SITES:
            raise InputError(f"unknown site {self.site!r}; the sites are {SITES}")
        if (self.head is None) == (self.site == "head"):
            raise InputError("a 'head' patch needs head=; the other sites take none")


class Readout:
    """The patching metric at the last position, from the final stream or from logits (float64).

    ``"prob"`` = ``softmax(logits)[target]`` (needs the whole vocabulary), ``"logit"`` =
    ``logits[target]``, ``"logit_diff"`` = ``logits[target] - logits[versus]`` (two columns of
    the unembedding only). Logits include ``b_U`` and the model's output transform, as the model's.
    """

    def __init__(self, model: "TransformerBridge", metric: str, target: int, versus: Optional[int] = None):
        check_metric(metric, versus)
        self.model, self.metric, self.target, self.versus = model, metric, target, versus

    def from_normed(self, rows: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch"]:
        """The metric from final-norm outputs at the last position. ``"prob"`` runs the lens's
        tiled full-vocabulary reduction (:func:`lenslib.core.stats.lens_stats`: float32 logits,
        float64 sums, no ``[batch, d_vocab]`` tensor); the others read one or two columns."""
        if self.metric == "prob":
            model = self.model
            stats = lens_stats(rows.unsqueeze(0), model.W_U.detach(), getattr(model, "b_U", None),
                               torch.full((rows.shape[0],), self.target, dtype=torch.long), k=1,
                               output_transform=output_transform(model))
            return stats.target_prob[0].double()
        columns = [self.target] + ([self.versus] if self.metric == "logit_diff" else [])
        logits = unembed(self.model, rows, torch.tensor(columns, device=rows.device)).double()
        return logits[:, 0] if self.metric == "logit" else logits[:, 0] - logits[:, 1]

    def from_logits(self, logits: Float[Tensor, "batch d_vocab"]) -> Float[Tensor, "batch"]:
        """The metric from the last position's logits."""
        logits = logits.double()
        if self.metric == "prob":
            return logits.softmax(-1)[:, self.target]
        if self.metric == "logit":
            return logits[:, self.target]
        return logits[:, self.target] - logits[:, self.versus]


@dataclass
class Recording:
    """One unpatched run: its activation at every site, its cached keys and values, its metric.

    Attributes:
        tokens: ``[pos]`` the token ids run (BOS included where the prompt had one).
        acts: ``"resid"`` ``[layer + 1, pos, d_model]`` (the stream entering each block, then the
            last block's output), ``"attn"`` and ``"mlp"`` ``[layer, pos, d_model]``, ``"head"``
            ``[layer, pos, head, d_head]``; in the model's dtype, on its device.
        kv: per block, the keys and values ``([1, kv_head, pos, d_head], ...)`` (SDPA path only).
        value: the metric of this run (float64).
        path: ``"sdpa"`` or ``"bridge"``: how it was run; patched runs go the same way.
    """

    tokens: Int[Tensor, "pos"]
    acts: dict[str, Tensor]
    kv: Optional[list[tuple[Tensor, Tensor]]]
    value: float
    path: str


def choose_path(model: "TransformerBridge", forward: str = "auto") -> str:
    """``"sdpa"`` or ``"bridge"`` for ``forward`` in ``("auto", "sdpa", "bridge")``.

    Raises:
        InputError: an unknown choice, or ``"sdpa"`` where it would not reproduce the bridge.
    """
    if forward not in FORWARD_CHOICES:
        raise InputError(f"forward must be one of {FORWARD_CHOICES}, got {forward!r}")
    if forward == "bridge":
        return "bridge"
    reason = sdpa_unavailable_reason(model, [])
    if reason is None:
        return "sdpa"
    if forward == "sdpa":
        raise InputError(f"forward='sdpa' cannot reproduce the bridge here: {reason}. Use forward='auto' or 'bridge'.")
    return "bridge"


@torch.no_grad()
def record(model: "TransformerBridge", tokens: Int[Tensor, "pos"], readout: Readout, path: str = "auto") -> Recording:
    """Run ``tokens`` once (no patch) and keep every site's activation (see :class:`Recording`)."""
    path = choose_path(model, path)
    tokens = tokens.view(-1).cpu()
    if path == "bridge":
        return _record_bridge(model, tokens, readout)
    return _record_sdpa(model, tokens, readout)


@torch.no_grad()
def run_patches(
    model: "TransformerBridge",
    base: Recording,
    source: Recording,
    runs: Sequence[Sequence[Patch]],
    readout: Readout,
    *,
    batch_size: int = 32,
) -> Float[Tensor, "run"]:
    """Run ``base``'s prompt once per entry of ``runs``, each with its patches taken from
    ``source``; return the metric of each run (float64, CPU).

    Args:
        base: the run patched into (the corrupt run when denoising, the clean run when noising).
        source: the run the patched activations come from (same number of tokens).
        runs: one tuple of :class:`Patch` per run (an empty tuple: the base run itself).
        readout: the metric.
        batch_size: at most this many runs share a forward pass.
    """
    if base.tokens.numel() != source.tokens.numel():
        raise InputError("the base and source runs must have the same number of tokens")
    if base.path != source.path:
        raise InputError("the base and source runs were recorded on different forward paths")
    n_layers, n_tokens = base.acts["attn"].shape[0], base.tokens.numel()
    for run in runs:
        for patch in run:
            _check_patch(patch, n_layers, n_tokens, base.acts["head"].shape[2])
    values = torch.empty(len(runs), dtype=torch.float64)
    if base.path == "bridge":
        for start in range(0, len(runs), batch_size):
            chunk = list(range(start, min(start + batch_size, len(runs))))
            values[chunk] = _bridge_batch(model, base, source, [runs[i] for i in chunk], readout).cpu()
        return values
    prefix = _prefix_allowed(model, n_tokens)
    parts = _shadow_parts(model)
    finals = torch.empty(len(runs), base.acts["resid"].shape[-1], dtype=base.acts["resid"].dtype,
                         device=base.acts["resid"].device)
    for batch in plan_batches([_start(run, n_layers, prefix) for run in runs], n_tokens, batch_size):
        finals[batch] = _sdpa_batch(model, parts, base, source, [runs[i] for i in batch], prefix)
    for start in range(0, len(runs), 256):  # the unembedding once for many runs: larger matmuls
        values[start : start + 256] = readout.from_normed(finals[start : start + 256]).cpu()
    return values


def plan_batches(starts: Sequence[tuple[int, int]], n_tokens: int, batch_size: int) -> list[list[int]]:
    """Group runs into forward passes: runs of one first block share passes; within a block, runs
    sorted by first position are split where that saves more recomputed tokens than a pass costs.

    Args:
        starts: per run, ``(first block, first position)`` patched.
        n_tokens: the prompt's length.
        batch_size: the most runs in a pass.

    Returns:
        Lists of run indices, one per forward pass.
    """
    by_layer: dict[int, list[int]] = {}
    for i, (layer, _) in enumerate(starts):
        by_layer.setdefault(layer, []).append(i)
    batches = []
    for layer in sorted(by_layer):
        order = sorted(by_layer[layer], key=lambda i: starts[i][1])
        pos = [starts[i][1] for i in order]
        n = len(order)
        best = [0.0] + [float("inf")] * n  # best[j]: cheapest cost of the first j runs
        cut = [0] * (n + 1)
        for j in range(1, n + 1):
            for i in range(max(0, j - batch_size), j):  # runs i..j-1 in one pass starting at pos[i]
                cost = best[i] + (j - i) * (n_tokens - pos[i]) + FORWARD_OVERHEAD_TOKENS
                if cost < best[j]:
                    best[j], cut[j] = cost, i
        j, groups = n, []
        while j > 0:
            groups.append(order[cut[j] : j])
            j = cut[j]
        batches += groups[::-1]
    return batches


# ---------------------------------------------------------------- checks


def _check_patch(patch: Patch, n_layers: int, n_tokens: int, n_heads: int) -> None:
    top = n_layers if patch.site == "resid" else n_layers - 1
    if not 0 <= patch.layer <= top:
        raise InputError(f"{patch}: layer must be in [0, {top}] for site {patch.site!r}")
    if patch.pos is not None and not 0 <= patch.pos < n_tokens:
        raise InputError(f"{patch}: position must be in [0, {n_tokens - 1}]")
    if patch.head is not None and not 0 <= patch.head < n_heads:
        raise InputError(f"{patch}: head must be in [0, {n_heads - 1}]")


def _start(run: Sequence[Patch], n_layers: int, prefix: bool) -> tuple[int, int]:
    """The first block and the first position a run changes (``(n_layers, 0)`` for no patch)."""
    if not run:
        return n_layers, 0
    layer = min(p.layer for p in run)
    pos = min(0 if p.pos is None else p.pos for p in run) if prefix else 0
    return layer, pos


def _prefix_allowed(model, n_tokens: int) -> bool:
    """Whether cached keys and values of a prefix can stand in for it: not once a sliding window
    (Gemma 3's local layers) would drop part of it."""
    window = getattr(model.original_model.config, "sliding_window", None)
    return window is None or n_tokens < int(window)


# ---------------------------------------------------------------- bridge path


def bridge_hook_name(site: str, layer: int, n_layers: int) -> str:
    """The TransformerLens hook of ``site`` at ``layer`` (``resid`` at ``n_layers``: the last
    block's ``hook_resid_post``)."""
    if site == "resid":
        return f"blocks.{layer}.hook_resid_pre" if layer < n_layers else f"blocks.{n_layers - 1}.hook_resid_post"
    return {"attn": f"blocks.{layer}.hook_attn_out", "mlp": f"blocks.{layer}.hook_mlp_out",
            "head": f"blocks.{layer}.attn.hook_z"}[site]


def _record_bridge(model, tokens: Tensor, readout: Readout) -> Recording:
    n_layers = int(model.cfg.n_layers)
    names = {site: [bridge_hook_name(site, l, n_layers) for l in range(n_layers + (site == "resid"))]
             for site in SITES}
    logits, cache = model.run_with_cache(
        tokens.view(1, -1).to(model.W_U.device), names_filter=[n for ns in names.values() for n in ns],
        **last_logits_only(model))
    acts = {site: torch.stack([cache[n][0] for n in ns]) for site, ns in names.items()}
    return Recording(tokens, acts, None, float(readout.from_logits(logits[:, -1])[0]), "bridge")


def _bridge_batch(model, base: Recording, source: Recording, runs, readout: Readout) -> Tensor:
    n_layers = base.acts["attn"].shape[0]
    by_hook: dict[tuple[str, int], list[tuple[int, Patch]]] = {}
    for row, run in enumerate(runs):
        for patch in run:
            by_hook.setdefault((patch.site, patch.layer), []).append((row, patch))
    fwd_hooks = [(bridge_hook_name(site, layer, n_layers), _replacing_hook(source.acts[site][layer], rows, 0))
                 for (site, layer), rows in by_hook.items()]
    tokens = base.tokens.view(1, -1).expand(len(runs), -1).to(model.W_U.device)
    logits = model.run_with_hooks(tokens, fwd_hooks=fwd_hooks, **last_logits_only(model))
    return readout.from_logits(logits[:, -1])


def _replacing_hook(clean: Tensor, rows: list[tuple[int, Patch]], p0: int):
    """A TransformerLens hook ``(activation, hook) -> activation`` that writes ``clean`` (the
    source's ``[pos, ...]`` activation) into the rows' patched positions; the activation's
    position axis starts at ``p0``."""

    def hook(activation: Tensor, hook=None) -> Tensor:
        return _write(activation, clean, rows, p0)

    return hook


def _write(activation: Tensor, clean: Tensor, rows: list[tuple[int, Patch]], p0: int) -> Tensor:
    patched = activation.clone()
    shape = patched.shape
    if rows and rows[0][1].site == "head" and patched.dim() == 3:  # o_proj input [batch, pos, head * d_head]
        patched = patched.view(shape[0], shape[1], clean.shape[1], clean.shape[2])
    clean = clean.to(patched.dtype)
    for row, patch in rows:
        if patch.pos is None:  # every position: those from p0 on are the ones present
            where, value = (row, slice(None)), clean[p0:]
        else:
            where, value = (row, patch.pos - p0), clean[patch.pos]
        if patch.head is not None:
            patched[where + (patch.head,)] = value[..., patch.head, :]
        else:
            patched[where] = value
    return patched.view(shape)


# ---------------------------------------------------------------- SDPA path


class _Skipped(torch.nn.Module):
    """Stands in for a decoder layer below the first patched block: its output is its input
    (the batch starts from the base run's stream entering the first patched block)."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


_SKIPPED = _Skipped()


def _shadow_parts(model):
    shadow, layers_path, _ = sdpa_shadow(model)
    layers = shadow.get_submodule(layers_path)
    decoder = shadow.get_submodule(layers_path.rsplit(".", 1)[0])
    return shadow, decoder, layers


def _site_module(layers, site: str, layer: int) -> torch.nn.Module:
    """The Hugging Face module whose output (``"attn"``, ``"mlp"``) or input (``"head"``) is the
    site: with sandwich norms (Gemma 2/3) the norms after attention and after the MLP, whose
    outputs are what the block adds to the stream, as the bridge's ``hook_attn_out`` sees it."""
    block = layers[layer]
    sandwich = hasattr(block, "pre_feedforward_layernorm") and hasattr(block, "post_feedforward_layernorm")
    if site == "attn":
        return block.post_attention_layernorm if sandwich else block.self_attn
    if site == "mlp":
        return block.post_feedforward_layernorm if sandwich else block.mlp
    return block.self_attn.o_proj  # "head": its input


def _record_sdpa(model, tokens: Tensor, readout: Readout) -> Recording:
    from transformers import DynamicCache

    shadow, decoder, layers = _shadow_parts(model)
    n_layers = len(layers)
    store: dict[tuple[str, int], Tensor] = {}

    def keep_input(site, layer):
        def pre_hook(module, args, kwargs):
            store[site, layer] = (args[0] if args else kwargs["hidden_states"])[0]
        return pre_hook

    def keep_output(site, layer):
        def hook(module, args, output):
            store[site, layer] = (output[0] if isinstance(output, tuple) else output)[0]
        return hook

    handles = []
    try:
        for l, layer in enumerate(layers):
            handles.append(layer.register_forward_pre_hook(keep_input("resid", l), with_kwargs=True))
            handles.append(_site_module(layers, "attn", l).register_forward_hook(keep_output("attn", l)))
            handles.append(_site_module(layers, "mlp", l).register_forward_hook(keep_output("mlp", l)))
            handles.append(_site_module(layers, "head", l).register_forward_pre_hook(keep_input("head", l), with_kwargs=True))
        handles.append(decoder.norm.register_forward_pre_hook(keep_input("resid", n_layers), with_kwargs=True))
        cache = DynamicCache(config=shadow.config)
        out = decoder(input_ids=tokens.view(1, -1).to(model.W_U.device), past_key_values=cache, use_cache=True)
    finally:
        for handle in handles:
            handle.remove()
    n_heads = int(model.cfg.n_heads)
    acts = {
        "resid": torch.stack([store["resid", l] for l in range(n_layers + 1)]),
        "attn": torch.stack([store["attn", l] for l in range(n_layers)]),
        "mlp": torch.stack([store["mlp", l] for l in range(n_layers)]),
        "head": torch.stack([store["head", l].reshape(tokens.numel(), n_heads, -1) for l in range(n_layers)]),
    }
    kv = [(layer.keys, layer.values) for layer in cache.layers]
    value = float(readout.from_normed(out.last_hidden_state[:, -1])[0])
    return Recording(tokens, acts, kv, value, "sdpa")


def _sdpa_batch(model, parts, base: Recording, source: Recording, runs, prefix: bool) -> Tensor:
    """``[run, d_model]`` the final-norm output at the last position of each patched run."""
    from transformers import DynamicCache

    shadow, decoder, layers = parts
    n_layers, n_tokens = len(layers), base.tokens.numel()
    starts = [_start(run, n_layers, prefix) for run in runs]
    l0, p0 = min(s[0] for s in starts), min(s[1] for s in starts)
    batch = len(runs)
    device = model.W_U.device
    hidden = base.acts["resid"][l0, p0:].unsqueeze(0).expand(batch, -1, -1).contiguous()
    cache = None
    if p0 > 0:
        cache = DynamicCache(config=shadow.config)
        for cached, (keys, values) in zip(cache.layers, base.kv):
            cached.update(keys[:, :, :p0].expand(batch, -1, -1, -1), values[:, :, :p0].expand(batch, -1, -1, -1))
    by_module: dict[tuple[str, int], list[tuple[int, Patch]]] = {}
    for row, run in enumerate(runs):
        for patch in run:
            by_module.setdefault((patch.site, patch.layer), []).append((row, patch))
    handles, originals = [], list(layers)
    try:
        for (site, layer), rows in by_module.items():
            clean = source.acts[site][layer]
            if site == "resid":
                module = layers[layer] if layer < n_layers else decoder.norm
                handles.append(module.register_forward_pre_hook(_input_patch(clean, rows, p0), with_kwargs=True))
            elif site == "head":
                module = _site_module(layers, site, layer)
                handles.append(module.register_forward_pre_hook(_input_patch(clean, rows, p0), with_kwargs=True))
            else:
                handles.append(_site_module(layers, site, layer).register_forward_hook(_output_patch(clean, rows, p0)))
        for l in range(l0):
            layers[l] = _SKIPPED
        out = decoder(
            inputs_embeds=hidden,
            position_ids=torch.arange(p0, n_tokens, device=device).view(1, -1),
            past_key_values=cache,
            use_cache=cache is not None,
        )
    finally:
        for l in range(l0):
            layers[l] = originals[l]
        for handle in handles:
            handle.remove()
    return out.last_hidden_state[:, -1]


def _input_patch(clean: Tensor, rows, p0: int) -> Callable:
    def pre_hook(module, args, kwargs):
        if args:
            return (_write(args[0], clean, rows, p0),) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": _write(kwargs["hidden_states"], clean, rows, p0)}

    return pre_hook


def _output_patch(clean: Tensor, rows, p0: int) -> Callable:
    def hook(module, args, output):
        if isinstance(output, tuple):
            return (_write(output[0], clean, rows, p0),) + tuple(output[1:])
        return _write(output, clean, rows, p0)

    return hook
