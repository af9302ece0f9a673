"""Activation patching of components: each block's attention and MLP output, and single heads.

Residual-stream patching (:func:`lenslib.causal.patching.patch_layers`) says *where* the
information is; patching a component's output says *which component moves it*. Each patched run
replaces one activation, at one block and one position, by the same activation from the other
prompt, recomputes everything after it, and measures the answer at the last position:

* **denoising** (clean into corrupt): run the corrupt prompt, patch in the clean activation. A
  large effect means the activation is *sufficient* to bring the answer back.
* **noising** (corrupt into clean): run the clean prompt, patch in the corrupt activation. A large
  effect means the clean activation is *necessary*.

Sites (``site=``): ``"attn"`` (the attention output as added to the residual stream,
``blocks.{l}.hook_attn_out``), ``"mlp"`` (``hook_mlp_out``), ``"head"`` (one head's output before
the output projection, ``blocks.{l}.attn.hook_z[:, :, h]``), ``"resid"`` (the stream entering each
block, as :func:`patch_layers`). On Gemma 3 the attention and MLP outputs are taken after their
post-norms, which act on each position alone; single heads are refused there (see
:func:`patch_components`). The patched runs are batched, start at the first patched block and
recompute only the positions from the first patched one on (:mod:`lenslib.causal.sites`).

>>> import lenslib
>>> from lenslib.causal.components import patch_components
>>> model = lenslib.load_model("tiny-llama")
>>> result = patch_components(model, "abcab", "abdab", target="c", site="attn", metric="logit")
>>> result.layer_labels, result.restored.shape           # [block, pos]: BOS + 5 characters
(['0_attn', '1_attn'], torch.Size([2, 6]))
>>> heads = patch_components(model, "abcab", "abdab", target="c", site="head", direction="noising")
>>> heads.by_head().shape                                 # [block, head] at the last position
torch.Size([2, 4])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence, Union

import torch

from lenslib.causal.attribution import has_post_attention_norm
from lenslib.causal.patching import PatchResult, patch_inputs, same_length_tokens
from lenslib.causal.sites import (
    SITES,
    Patch,
    Readout,
    choose_path,
    record,
    run_patches,
)
from lenslib.core import bridge
from lenslib.core.tokens import Decoder, Token, resolve_positions
from lenslib.errors import InputError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

DIRECTIONS = ("denoising", "noising")


def patch_components(
    model: "TransformerBridge",
    clean: str,
    corrupt: str,
    *,
    target: Token,
    site: str = "attn",
    direction: str = "denoising",
    versus: Optional[Token] = None,
    metric: Optional[str] = None,
    positions: Union[None, str, int, Sequence[int]] = None,
    layers: Optional[Sequence[int]] = None,
    batch_size: int = 32,
    skip_no_ops: bool = True,
    prepend_bos: Optional[bool] = None,
    forward: str = "auto",
) -> PatchResult:
    """Patch one component's output at a time, block x position (x head), and measure the answer.

    The metric ``m`` is read at the last position: ``"prob"`` = P(target), ``"logit"`` =
    logit(target), ``"logit_diff"`` = logit(target) - logit(versus) (logits with ``b_U``).
    With ``m_clean`` and ``m_corrupt`` the unpatched runs' values, every patched run gets

    * ``restored = (m_patched - m_corrupt) / (m_clean - m_corrupt)`` (both directions: 0 = the
      corrupt run's value, 1 = the clean run's), and
    * ``effect`` = ``restored`` when denoising, ``1 - restored = (m_clean - m_patched) /
      (m_clean - m_corrupt)`` when noising: the share of the difference the patch accounts for.

    Args:
        model: a ``TransformerBridge`` (:func:`lenslib.load_model`).
        clean: the prompt whose answer is ``target``.
        corrupt: a prompt of the same number of tokens that changes the answer.
        target: the answer token (one token, as a string or an id).
        site: ``"attn"``, ``"mlp"``, ``"head"`` or ``"resid"`` (see the module docstring).
        direction: ``"denoising"`` (clean activations into the corrupt run) or ``"noising"``
            (corrupt activations into the clean run).
        versus: a second token; the default metric becomes ``"logit_diff"``.
        metric: ``"prob"`` (default without ``versus``), ``"logit"`` or ``"logit_diff"``.
        positions: the positions patched: ``None`` = every position, except for
            ``site="head"``, where it means the last position only; ``"all"``, ``"last"``, an
            int or a list.
        layers: the blocks patched (default: all; for ``"resid"``, ``n_layers`` is the last
            block's output, ``"final_post"``).
        batch_size: patched runs per forward pass.
        skip_no_ops: give the unpatched value, without running, to patches that provably change
            nothing: the two runs' activations are identical there (e.g. before the first token
            where the prompts differ), or the last block's output at a position other than the
            last (it never reaches the last position's logits). ``False`` runs them too.
        prepend_bos: prepend BOS; ``None`` uses the model's default.
        forward: ``"auto"`` (the fused-attention Hugging Face layers where they reproduce the
            bridge, else the bridge), ``"sdpa"`` or ``"bridge"`` (TransformerLens hooks).

    Returns:
        A :class:`~lenslib.causal.patching.PatchResult` with ``site`` and ``direction`` set:
        ``[block, pos]`` rows ``"{l}_attn"`` / ``"{l}_mlp"``; ``[block * head, pos]`` rows
        ``"{l}_attn_h{h}"`` (:meth:`~PatchResult.by_head` gives ``[block, head]``);
        ``[n_layers + 1, pos]`` rows ``"{l}_pre"``, ``"final_post"`` for ``"resid"``.

    Raises:
        InputError: an unknown site or direction, heads on a model that normalises after mixing
            its heads (Gemma 2/3), prompts of different token lengths (both tokenizations are
            shown), a target of several tokens, a bad metric, layer or position, or a clean run
            whose metric equals the corrupt run's (nothing to patch; raised before any patch).
    """
    if site not in SITES:
        raise InputError(f"unknown site {site!r}; choose one of {SITES} (attention output, MLP output, one head, "
                         "residual stream)")
    if direction not in DIRECTIONS:
        raise InputError(f"unknown direction {direction!r}; choose 'denoising' (clean activations into the corrupt "
                         "run) or 'noising' (corrupt activations into the clean run)")
    if site == "head" and has_post_attention_norm(model):
        raise InputError(
            "site='head' is refused for this model: it normalises the attention output after mixing the heads "
            "(Gemma's post-attention RMSNorm), so one head's output does not enter the residual stream on its "
            "own, and a patched head would also rescale every other head of its block. Patch whole blocks "
            "with site='attn' (exact here), or use a Llama-style model (e.g. smollm2-135m) for heads."
        )
    target_id, versus_id, metric = patch_inputs(model, clean, corrupt, target, versus, metric)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    readout = Readout(model, metric, target_id, versus_id)
    path = choose_path(model, forward)
    decode = Decoder(model.tokenizer)
    clean_ids, corrupt_ids = same_length_tokens(model, clean, corrupt, prepend_bos, decode)
    n_tokens, n_layers = clean_ids.numel(), int(model.cfg.n_layers)
    if positions is None and site == "head":
        positions = "last"
    chosen = resolve_positions(None if positions == "all" else positions, n_tokens)
    blocks = _blocks(layers, n_layers, site)
    rows = [(block, head) for block in blocks for head in (range(int(model.cfg.n_heads)) if site == "head" else [-1])]

    clean_run = record(model, clean_ids, readout, path)
    corrupt_run = record(model, corrupt_ids, readout, path)
    if clean_run.value == corrupt_run.value:
        raise InputError(
            f"the {metric} is the same on the clean and the corrupt run ({clean_run.value:.4g}): there is nothing "
            "to patch; pick a corrupt prompt that changes the answer."
        )
    base, source = (corrupt_run, clean_run) if direction == "denoising" else (clean_run, corrupt_run)
    patches = [Patch(site, block, int(pos), None if head < 0 else head) for block, head in rows for pos in chosen]
    values = torch.full((len(patches),), base.value, dtype=torch.float64)
    todo = [i for i, p in enumerate(patches) if not skip_no_ops or not is_no_op(p, base, source)]
    if todo:
        values[todo] = run_patches(model, base, source, [(patches[i],) for i in todo], readout, batch_size=batch_size)
    raw = values.view(len(rows), chosen.numel())
    clean_value, corrupt_value = clean_run.value, corrupt_run.value
    return PatchResult(
        restored=((raw - corrupt_value) / (clean_value - corrupt_value)).float(),
        metric=raw.float(),
        metric_name=metric,
        clean_value=clean_value,
        corrupt_value=corrupt_value,
        layer_labels=[_label(site, block, head, n_layers) for block, head in rows],
        positions=chosen,
        clean_tokens=decode.each(clean_ids.tolist()),
        corrupt_tokens=decode.each(corrupt_ids.tolist()),
        target_token=decode.one(target_id),
        versus_token=None if versus_id is None else decode.one(versus_id),
        model_name=bridge.model_name(model),
        site=site,
        direction=direction,
        block=[block for block, _ in rows],
        head=[head for _, head in rows],
    )


def is_no_op(patch: Patch, base, source) -> bool:
    """Whether a single-position patch provably leaves the last position's logits as they are:
    the source's activation equals the base run's there, or it is the last block's output (or
    its attention, MLP or a head) at a position other than the last."""
    n_layers, n_tokens = base.acts["attn"].shape[0], base.tokens.numel()
    last_block = n_layers if patch.site == "resid" else n_layers - 1
    if patch.layer == last_block and patch.pos is not None and patch.pos != n_tokens - 1:
        return True
    if patch.pos is None:
        return bool(torch.equal(base.acts[patch.site][patch.layer], source.acts[patch.site][patch.layer]))
    index = (patch.layer, patch.pos) + (() if patch.head is None else (patch.head,))
    return bool(torch.equal(base.acts[patch.site][index], source.acts[patch.site][index]))


def _blocks(layers: Optional[Sequence[int]], n_layers: int, site: str) -> list[int]:
    top = n_layers if site == "resid" else n_layers - 1
    if layers is None:
        return list(range(top + 1))
    if isinstance(layers, int) and not isinstance(layers, bool):
        layers = [layers]
    if not isinstance(layers, (list, tuple, range)) or not layers:
        raise InputError(f"layers must be a non-empty list of block indices, got {layers!r}")
    out = []
    for l in layers:
        if isinstance(l, bool) or not isinstance(l, int) or not -(top + 1) <= l <= top:
            raise InputError(f"layer {l!r} is not a block of this model; use 0..{top}"
                             + (f" ({n_layers} = the last block's output)" if site == "resid" else ""))
        out.append(l % (top + 1))
    return sorted(set(out))


def _label(site: str, block: int, head: int, n_layers: int) -> str:
    if site == "resid":
        return "final_post" if block == n_layers else f"{block}_pre"
    if site == "head":
        return f"{block}_attn_h{head}"
    return f"{block}_{site}"
