"""The residual stream at the speed of the model's own attention (SDPA), as a TransformerLens cache.

``TransformerBridge`` runs attention eagerly, re-implemented so that its attention hooks can
fire. A logit lens reads only the residual stream (``hook_resid_pre``, ``hook_resid_mid``,
``hook_resid_post``), which lies *between* the Hugging Face decoder layers: the same numbers
come out of the unmodified Hugging Face layers with PyTorch's fused
``scaled_dot_product_attention``. This module runs those layers:

* a *shadow* Hugging Face model is built once per bridge on the ``meta`` device with
  ``attn_implementation="sdpa"``, and its parameters and buffers are pointed at the bridge's own
  tensors (no weight is copied; it costs no memory); on CPU in float32 its linear layers run on
  oneDNN (:mod:`lenslib.core.onednn`; bench/ measures it against MKL, ``LENSLIB_MATMUL=torch``
  keeps MKL);
* forward pre-hooks on its decoder layers capture ``hook_resid_pre``, a forward hook on the last
  layer ``hook_resid_post``, and a pre-hook on the module the bridge's ``ln2`` wraps (the input of
  the pre-MLP norm, e.g. Llama's ``post_attention_layernorm``, Gemma 3's
  ``pre_feedforward_layernorm``) ``hook_resid_mid``;
* they go into a TransformerLens ``ActivationCache`` under the bridge's hook names, so
  ``cache.accumulated_resid(apply_ln=True)`` runs exactly as after ``run_with_cache``.

>>> import lenslib, torch
>>> from lenslib.core.forward import residual_cache
>>> model = lenslib.load_model("tiny-llama")
>>> tokens = model.to_tokens("abc")
>>> names = ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"]
>>> cache, path = residual_cache(model, tokens, names)
>>> path, cache["blocks.1.hook_resid_post"].shape    # [batch, pos, d_model]
('sdpa', torch.Size([1, 4, 32]))

Where the shadow cannot reproduce the bridge exactly (an architecture not verified here, weights
processed by ``enable_compatibility_mode``, hooks a user added to the bridge, a model dispatched
over several devices, a hook other than the residual stream), :func:`residual_cache` runs
``model.run_with_cache`` instead and says so: the second value it returns is ``"bridge"``.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Literal, Optional, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from lenslib.core import onednn
from lenslib.core.bridge import last_logits_only
from lenslib.errors import InputError

if TYPE_CHECKING:
    from transformer_lens.ActivationCache import ActivationCache
    from transformer_lens.model_bridge import TransformerBridge

ForwardPath = Literal["sdpa", "bridge"]
FORWARD_CHOICES = ("auto", "sdpa", "bridge")

# Hugging Face classes whose decoder layers were checked against the bridge's residual hooks
# (tests/test_fast_forward.py: tiny-llama and smollm2-135m are Llama, gemma-3-270m is Gemma 3,
# whose sandwich norms put hook_resid_mid at the pre-feed-forward norm's input).
VERIFIED_ARCHITECTURES = ("LlamaForCausalLM", "Gemma3ForCausalLM")
_RESIDUAL_SUFFIXES = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")
_WRAPPED = "._original_component"

# Kept on the objects themselves (not in module-level dicts, whose values would hold the models
# alive): the bridge's (snapshot, shadow), and the Hugging Face model's _TreeSnapshot.
_SHADOW_ATTR = "_lenslib_sdpa_shadow"
_SNAPSHOT_ATTR = "_lenslib_tree_snapshot"


def sdpa_unavailable_reason(model: "TransformerBridge", names: Sequence[str]) -> Optional[str]:
    """Why the SDPA path cannot give exactly the bridge's ``names`` hooks, or ``None`` if it can."""
    hf_model = getattr(model, "original_model", None)
    if hf_model is None:
        return "the bridge exposes no Hugging Face model (original_model)"
    architecture = type(hf_model).__name__
    if architecture not in VERIFIED_ARCHITECTURES:
        return f"{architecture} is not among the architectures verified for it ({', '.join(VERIFIED_ARCHITECTURES)})"
    if getattr(model, "compatibility_mode", False) or getattr(model, "_weights_processed", False):
        return "the bridge's weights were processed (compatibility mode), so its residual stream is not the model's"
    device_map = getattr(hf_model, "hf_device_map", None) or {}
    if len(set(device_map.values())) > 1 or len(_snapshot(hf_model).devices) > 1:
        return "the model is dispatched over several devices (device_map)"
    bad = [n for n in names if not _is_residual_hook(n, int(model.cfg.n_layers))]
    if bad:
        return f"hooks other than the residual stream were asked for: {bad[:3]}"
    if any("hook_resid_mid" in n for n in names):
        aliases = getattr(model.blocks[0], "hook_aliases", {}) or {}
        if aliases.get("hook_resid_mid") != "ln2.hook_in":
            return "hook_resid_mid is not the input of the block's ln2 here"
    hooked = [n for n, hook in model.hook_dict.items() if hook.has_hooks()]
    if hooked:
        return f"hooks are attached to the bridge ({hooked[:3]}); the bridge runs them"
    return None


def _is_residual_hook(name: str, n_layers: int) -> bool:
    parts = name.split(".")
    return (
        len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit()
        and int(parts[1]) < n_layers and parts[2] in _RESIDUAL_SUFFIXES
    )


@torch.no_grad()
def residual_cache(
    model: "TransformerBridge",
    tokens: Int[Tensor, "batch pos"],
    names: Sequence[str],
    *,
    attention_mask: Optional[Int[Tensor, "batch pos"]] = None,
    pos_slice: Optional[int] = None,
    forward: str = "auto",
) -> tuple["ActivationCache", ForwardPath]:
    """The residual-stream hooks ``names`` for ``tokens``, and which forward pass produced them.

    Args:
        model: a ``TransformerBridge``.
        tokens: ``[batch, pos]`` token ids, run as given (no BOS is added).
        names: residual-stream hook names, e.g. ``"blocks.3.hook_resid_pre"``.
        attention_mask: ``[batch, pos]``, 1 for real tokens; right padding never changes the
            real positions.
        pos_slice: keep only this position (the cache's ``pos`` axis has length 1).
        forward: ``"auto"`` (SDPA when exact, else the bridge), ``"sdpa"`` (raise if it cannot
            be exact) or ``"bridge"`` (``model.run_with_cache``, eager attention).

    Returns:
        A TransformerLens ``ActivationCache`` holding ``[batch, pos, d_model]`` per name (in
        the model's dtype, on its device), and ``"sdpa"`` or ``"bridge"``.

    Raises:
        ValueError: ``forward`` is not one of ``"auto"``, ``"sdpa"``, ``"bridge"``, or is
            ``"sdpa"`` where that path would not reproduce the bridge (the message says why).
    """
    if forward not in FORWARD_CHOICES:
        raise InputError(f"forward must be one of {FORWARD_CHOICES}, got {forward!r}")
    reason = None if forward == "bridge" else sdpa_unavailable_reason(model, names)
    if forward == "sdpa" and reason is not None:
        raise InputError(f"forward='sdpa' cannot reproduce the bridge here: {reason}. Use forward='auto' or 'bridge'.")
    if forward == "bridge" or reason is not None:
        return _bridge_cache(model, tokens, names, attention_mask, pos_slice), "bridge"
    return _sdpa_cache(model, tokens, names, attention_mask, pos_slice), "sdpa"


def _bridge_cache(model, tokens, names, attention_mask, pos_slice) -> "ActivationCache":
    _, cache = model.run_with_cache(
        tokens, attention_mask=attention_mask, names_filter=list(names), pos_slice=pos_slice,
        **last_logits_only(model),
    )
    return cache


def _sdpa_cache(model, tokens, names, attention_mask, pos_slice) -> "ActivationCache":
    from transformer_lens.ActivationCache import ActivationCache

    shadow, layers_path, ln2_name = sdpa_shadow(model)
    layers = shadow.get_submodule(layers_path)
    wanted = set(names)
    store: dict[str, Tensor] = {}
    keep = (lambda x: x) if pos_slice is None else (lambda x: x[:, pos_slice : pos_slice + 1])

    def capture(name):
        def pre_hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            store[name] = keep(hidden)

        return pre_hook

    def capture_output(name):
        def hook(module, args, output):
            store[name] = keep(output[0] if isinstance(output, tuple) else output)

        return hook

    handles = []
    try:
        for l, layer in enumerate(layers):
            if f"blocks.{l}.hook_resid_pre" in wanted:
                handles.append(layer.register_forward_pre_hook(capture(f"blocks.{l}.hook_resid_pre"), with_kwargs=True))
            if f"blocks.{l}.hook_resid_mid" in wanted:
                norm = layer.get_submodule(ln2_name)
                handles.append(norm.register_forward_pre_hook(capture(f"blocks.{l}.hook_resid_mid"), with_kwargs=True))
            if f"blocks.{l}.hook_resid_post" in wanted:
                handles.append(layer.register_forward_hook(capture_output(f"blocks.{l}.hook_resid_post")))
        device = model.W_U.device
        base = shadow.get_submodule(layers_path.rsplit(".", 1)[0])  # the decoder stack, no lm_head
        base(
            input_ids=tokens.to(device),
            attention_mask=None if attention_mask is None else attention_mask.to(device),
            use_cache=False,
        )
    finally:
        for handle in handles:
            handle.remove()
    return ActivationCache({n: store[n] for n in names}, model, has_batch_dim=True)


def sdpa_shadow(model) -> tuple[torch.nn.Module, str, str]:
    """The SDPA Hugging Face model sharing the bridge's tensors, the path to its decoder layers
    and the name (inside a layer) of the module whose input is ``hook_resid_mid``; built once
    per bridge, and rebuilt if the bridge's modules or tensors were replaced since."""
    hf_model = model.original_model
    snapshot = _snapshot(hf_model)
    key = (snapshot, onednn.mode())
    cached = getattr(model, _SHADOW_ATTR, None)
    if cached is not None and cached[0] == key:
        return cached[1]
    sources = snapshot.named_tensors()
    config = copy.deepcopy(hf_model.config)
    with torch.device("meta"):
        shadow = type(hf_model)._from_config(config, attn_implementation="sdpa")
    shadow.eval()
    tensors = list(shadow.named_parameters(remove_duplicate=False))
    tensors += list(shadow.named_buffers(remove_duplicate=False))
    for name, tensor in tensors:
        if name not in sources:
            if name.startswith("lm_head."):
                continue  # never run: the decoder stack alone gives the residual stream
            raise RuntimeError(f"the shadow model's {name} has no counterpart in the bridge")
        owner_name, _, attr = name.rpartition(".")
        owner = shadow.get_submodule(owner_name)
        source = sources[name]
        if isinstance(tensor, torch.nn.Parameter):
            owner._parameters[attr] = torch.nn.Parameter(source, requires_grad=False)
        else:
            owner._buffers[attr] = source
    onednn.use_for_linear_layers(shadow)
    layers_path = _unwrapped_name(hf_model, model.blocks[0]).rsplit(".", 1)[0]
    ln2 = getattr(model.blocks[0], "ln2", None)
    ln2_name = getattr(ln2, "name", None) or ""
    built = (shadow, layers_path, ln2_name)
    object.__setattr__(model, _SHADOW_ATTR, (key, built))  # not registered as a submodule
    return built


def _snapshot(hf_model) -> "_TreeSnapshot":
    """The model's :class:`_TreeSnapshot`, taken again when the last one no longer holds."""
    snapshot = getattr(hf_model, _SNAPSHOT_ATTR, None)
    if snapshot is None or not snapshot.holds():
        snapshot = _TreeSnapshot(hf_model)
        object.__setattr__(hf_model, _SNAPSHOT_ATTR, snapshot)  # not registered as a submodule
    return snapshot


class _TreeSnapshot:
    """A module tree as it was when taken: every entry of every module's ``_modules``,
    ``_parameters`` and ``_buffers``, and where each tensor's data lies.

    :meth:`holds` is one pass over those dicts, much cheaper than walking ``named_parameters``
    through the bridge's wrappers on every lens call.
    It sees a module, parameter or buffer replaced, added or removed, and a tensor's data
    moved, cast or reassigned (``.to``, ``.data = ...``); in-place writes to the same memory
    need nothing, since the shadow shares that memory.
    """

    def __init__(self, root: torch.nn.Module):
        self.root = root
        self.tables = []
        for module in root.modules():
            for table in (module._modules, module._parameters, module._buffers):
                self.tables.append((table, len(table), [(k, v, _placement(v)) for k, v in table.items()]))
        tensors = [t for _, _, entries in self.tables for _, t, _ in entries if isinstance(t, Tensor)]
        self.devices = {str(t.device) for t in tensors}

    def holds(self) -> bool:
        for table, size, entries in self.tables:
            if len(table) != size:
                return False
            for key, value, placement in entries:
                current = table.get(key)
                if current is not value or _placement(current) != placement:
                    return False
        return True

    def named_tensors(self) -> dict[str, Tensor]:
        """Parameters and buffers under their plain Hugging Face names (the bridge wraps every
        module, adding ``._original_component`` to the path)."""
        named = list(self.root.named_parameters(remove_duplicate=False))
        named += list(self.root.named_buffers(remove_duplicate=False))
        return {name.replace(_WRAPPED, ""): tensor.detach() for name, tensor in named}


def _placement(value) -> Optional[tuple]:
    return (value.data_ptr(), value.dtype, value.device) if isinstance(value, Tensor) else None


def _unwrapped_name(hf_model, block) -> str:
    target = getattr(block, "original_component", block)
    for name, module in hf_model.named_modules(remove_duplicate=False):
        if module is block or module is target:
            return name.replace(_WRAPPED, "")
    raise RuntimeError("could not find the bridge's first block inside its Hugging Face model")
