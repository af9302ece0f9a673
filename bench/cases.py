"""What the benchmark times: one entry per case in ``CASES``; adding a case touches this file only.

Each case gets a :class:`Context` (the model, the prompt of exactly N tokens, ...) and returns the
function to time, or says why it is skipped. The functions run under ``torch.no_grad()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

TOP_K = 5
# Peak extra memory of the naive path, in [layer, pos, d_vocab]-sized tensors. This code measured
# +3.46 GB on smollm2-135m at 128 tokens (0.78 GB of logits: logits, log-probs, their exp and a
# product live at once), i.e. 4.4; shared/MODELS.md's +2.0 GB (smollm2) and +6.3 GB (gemma-3-270m)
# at 128 tokens, from another script, are 2.5. The larger is used, so a skip errs on the safe side.
NAIVE_LIVE_TENSORS = 4.5


@dataclass
class Context:
    """Everything a case may need for one model and prompt length."""

    model: object  # the TransformerBridge
    name: str
    prompt: str
    tokens: torch.Tensor  # [1, n_tokens], BOS included, on the device
    n_tokens: int
    device: str
    hf_sdpa: object = None  # a separate Hugging Face model object with SDPA attention
    resid: Optional[torch.Tensor] = None  # [layer, pos, d_model], what the lens decodes
    naive_limit: int = 0
    naive_limit_rule: str = ""
    tl_max_tokens: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def n_layer(self) -> int:
        return int(self.model.cfg.n_layers) + 1  # accumulated_resid: embeddings + each block's output


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    colour: str
    make: Callable[[Context], Callable[[], object]]
    skip: Callable[[Context], Optional[str]] = lambda ctx: None
    settle_after: bool = False  # idle after it: it frees gigabytes (see lens_bench.SETTLE_S)


# ---------------------------------------------------------------- the computations


def case_lens(model, prompt: str, positions, forward: str = "auto"):
    import lenslib

    return lenslib.logit_lens(model, prompt, k=TOP_K, positions=positions, forward=forward)


def case_naive(model, tokens: torch.Tensor):
    _, cache = model.run_with_cache(tokens)
    acc = cache.accumulated_resid(apply_ln=True)  # [layer, batch, pos, d_model]
    logits = model.unembed(acc)  # [layer, batch, pos, d_vocab]
    lp = logits.log_softmax(-1)
    entropy = -(lp.exp() * lp).sum(-1)
    top_lp, top_ids = lp.topk(TOP_K, dim=-1)
    kl = (lp[-1:].exp() * (lp[-1:] - lp)).sum(-1)  # KL(final || layer), nats
    return entropy, top_lp, top_ids, kl


def normalised_resid(model, tokens: torch.Tensor, forward: str = "auto") -> torch.Tensor:
    """``[layer, pos, d_model]``: what lenslib hands to ``lens_stats`` for all positions, computed
    as ``logit_lens`` computes it (case f; ``forward="bridge"``: case f_bridge)."""
    from lenslib.core.bridge import residual_hooks
    from lenslib.core.forward import residual_cache

    cache, _ = residual_cache(model, tokens, residual_hooks(int(model.cfg.n_layers), False), forward=forward)
    return cache.accumulated_resid(apply_ln=True)[:, 0]


def case_floor(resid: torch.Tensor, W_U: torch.Tensor, b_U: Optional[torch.Tensor], chunk_bytes: int,
               backend: Optional[str] = None):
    """The unembedding matmuls alone, tiled exactly as ``lens_stats`` tiles them (same tiles,
    same buffer, same code: ``lens_stats.column_tiles``), on the library the lens uses, or on
    ``backend`` (``"torch.mm"``: case d_torch). Returns the last tile."""
    from lenslib.core.stats import column_tiles, effective_bias, tile_shape

    n_layer, n_pos, d_model = resid.shape
    b_U = effective_bias(b_U)
    block, columns = tile_shape(n_layer, W_U.shape[1], chunk_bytes)
    buffer = torch.empty(min(block, n_pos) * n_layer * columns, device=W_U.device)
    rows_by_pos = resid.transpose(0, 1)  # [pos, layer, d_model], as lens_stats orders rows
    tile = buffer
    for start in range(0, n_pos, block):
        rows = rows_by_pos[start : start + block].reshape(-1, d_model).to(W_U.dtype)
        for _, tile in column_tiles(rows, W_U, b_U, columns, buffer, backend=backend):
            pass
    return tile


def case_forward(model, tokens: torch.Tensor):
    return model(tokens)


def case_hf_sdpa(hf_model, tokens: torch.Tensor):
    """What a user pays for the model's last-position prediction: Hugging Face, SDPA, last logits."""
    return hf_model(tokens, logits_to_keep=1, use_cache=False).logits


def next_token_targets(tokens: torch.Tensor) -> torch.Tensor:
    """``[1, pos]`` per-row targets for TransformerLens's lens: the next input token; the last
    position, which has none, repeats its own token (and is left out of every comparison)."""
    return torch.cat([tokens[:, 1:], tokens[:, -1:]], dim=1)


def case_tl_top_k(model, tokens: torch.Tensor):
    """TransformerLens's own lens, top-k pass: top-5 probabilities and entropy at every position."""
    from transformer_lens.tools.analysis import logit_lens

    return logit_lens(model, tokens, positions=None, top_k=TOP_K, return_type="probs")


def case_tl_targets(model, tokens: torch.Tensor):
    """TransformerLens's own lens, target pass: the next token's probability and rank (it takes
    ``top_k`` or ``targets`` per call, not both, so a user needs this second call)."""
    from transformer_lens.tools.analysis import logit_lens

    return logit_lens(model, tokens, positions=None, targets=next_token_targets(tokens), return_type="probs")


def load_hf_sdpa(name: str, dtype: torch.dtype, device: str):
    """A separate Hugging Face model object with the bridge's weights and SDPA attention."""
    from transformers import AutoModelForCausalLM

    import lenslib

    if name == "tiny-llama":
        from lenslib.models.random_weights import tiny_hf_model

        hf = tiny_hf_model(seed=0)[0].to(dtype)
        hf.set_attn_implementation("sdpa")
    else:
        hf = AutoModelForCausalLM.from_pretrained(
            lenslib.models.loading.hf_model_dir(name), dtype=dtype, attn_implementation="sdpa"
        )
    return hf.to(device).eval()


# ---------------------------------------------------------------- the registry


def _naive_skip(ctx: Context) -> Optional[str]:
    estimate = naive_estimate(ctx)
    if estimate <= ctx.naive_limit:
        return None
    logits_bytes = estimate / NAIVE_LIVE_TENSORS
    return (
        f"estimated {estimate / 1e9:.1f} GB ({NAIVE_LIVE_TENSORS} x the {logits_bytes / 1e9:.2f} GB "
        f"[layer, pos, d_vocab] logits) exceeds the limit of {ctx.naive_limit / 1e9:.1f} GB "
        f"({ctx.naive_limit_rule})"
    )


def naive_estimate(ctx: Context) -> int:
    bits = torch.finfo(ctx.model.W_U.dtype).bits
    return int(NAIVE_LIVE_TENSORS * ctx.n_layer * ctx.n_tokens * int(ctx.model.cfg.d_vocab) * bits // 8)


def _tl_skip(ctx: Context) -> Optional[str]:
    if ctx.n_tokens <= ctx.tl_max_tokens:
        return None
    return (
        f"TransformerLens's lens is run up to --tl-max-tokens {ctx.tl_max_tokens} tokens only, to "
        "keep the run within its time budget (its cost grows linearly with tokens)"
    )


def _floor(ctx: Context, backend: Optional[str] = None):
    from lenslib.core.stats import DEFAULT_CHUNK_BYTES

    W_U, b_U = ctx.model.W_U, getattr(ctx.model, "b_U", None)
    return lambda: case_floor(ctx.resid, W_U, b_U, DEFAULT_CHUNK_BYTES, backend)


# Timed in this order in each repetition; the naive path last (it frees gigabytes, after which
# this VM ran the next case slower: the floor came out slower than the lens, Gemma 128 tokens).
CASES: list[Case] = [
    Case("a", "logit_lens, all positions", "#1f77b4", lambda c: lambda: case_lens(c.model, c.prompt, None)),
    Case("b", "logit_lens, last position", "#2ca02c", lambda c: lambda: case_lens(c.model, c.prompt, "last")),
    Case("d", "floor: tiled unembedding matmul", "#7f7f7f", _floor),
    Case("d_torch", "the same tiles on torch.mm (MKL on CPU), the floor before lenslib used oneDNN",
         "#c7c7c7", lambda c: _floor(c, backend="torch.mm")),
    Case("e", "forward pass (bridge, all logits)", "#ff7f0e", lambda c: lambda: case_forward(c.model, c.tokens)),
    Case("e'", "Hugging Face forward, SDPA, last logits only", "#bcbd22",
         lambda c: lambda: case_hf_sdpa(c.hf_sdpa, c.tokens)),
    Case("f", "the lens's forward: residual stream + accumulated_resid", "#9467bd",
         lambda c: lambda: normalised_resid(c.model, c.tokens)),
    Case("f_bridge", "the bridge's forward: run_with_cache + accumulated_resid", "#8c564b",
         lambda c: lambda: normalised_resid(c.model, c.tokens, forward="bridge")),
    Case("g", "TransformerLens tools.analysis.logit_lens, top-5 pass", "#e377c2",
         lambda c: lambda: case_tl_top_k(c.model, c.tokens), skip=_tl_skip),
    Case("g_t", "TransformerLens tools.analysis.logit_lens, targets pass", "#17becf",
         lambda c: lambda: case_tl_targets(c.model, c.tokens), skip=_tl_skip),
    Case("c", "naive TransformerLens lens", "#d62728", lambda c: lambda: case_naive(c.model, c.tokens),
         skip=_naive_skip, settle_after=True),
]
BY_KEY = {case.key: case for case in CASES}
LABELS = {case.key: case.label for case in CASES}


# ---------------------------------------------------------------- agreement with TransformerLens


def agreement(lens, tl_top_k, tl_targets, tie_gap: float = 1e-5, entropy_tol: float = 1e-4) -> dict:
    """Where lenslib (case a) and TransformerLens's own lens (cases g, g_t) disagree.

    Top-1 is compared where lenslib's top two probabilities are more than ``tie_gap`` apart (else
    either order is right); entropy within ``entropy_tol`` nats; target ranks with
    TransformerLens's counted from 0, at every position that has a next token.
    """
    top_tl = tl_top_k.readout.top_ids[:, 0].cpu()  # [layer, pos, k]
    probs = lens.top_probs
    untied = (probs[..., 0] - probs[..., 1]) > tie_gap
    top1_differ = (top_tl[..., 0] != lens.top_ids[..., 0]) & untied
    entropy_tl = tl_top_k.readout.entropy[:, 0].cpu().double()
    entropy_diff = (entropy_tl - lens.entropy.double()).abs()
    out = {
        "positions": int(lens.positions.numel()),
        "layers": len(lens.layer_labels),
        "top1_compared": int(untied.sum()),
        "top1_ties_skipped": int((~untied).sum()),
        "top1_disagree": int(top1_differ.sum()),
        "top1_disagree_where": _where(top1_differ, lens.layer_labels),
        "entropy_max_abs_diff_nats": float(entropy_diff.max()),
        "entropy_over_tolerance": int((entropy_diff > entropy_tol).sum()),
        "entropy_tolerance_nats": entropy_tol,
        "tie_gap": tie_gap,
    }
    top_probs_tl = tl_top_k.readout.values[:, 0].cpu()
    out["top5_prob_max_abs_diff"] = float((top_probs_tl - probs).abs().max()) if torch.equal(
        tl_top_k.readout.top_ids[:, 0].cpu(), lens.top_ids) else None
    if tl_targets is not None:
        rank_tl = tl_targets.readout.target_ranks[:, 0, :, 0].cpu()[:, :-1]  # [layer, pos - 1]
        rank_lens = lens.target_rank[:, :-1] - 1
        differ = rank_tl != rank_lens
        prob_tl = tl_targets.readout.values[:, 0, :, 0].cpu()[:, :-1]
        out.update({
            "ranks_compared": int(differ.numel()),
            "rank_disagree": int(differ.sum()),
            "rank_disagree_where": _where(differ, lens.layer_labels),
            "rank_max_abs_diff": int((rank_tl - rank_lens).abs().max()),
            "target_prob_max_abs_diff": float((prob_tl - lens.target_prob[:, :-1]).abs().max()),
        })
    return out


def _where(mask: torch.Tensor, labels: list[str], limit: int = 5) -> list[str]:
    return [f"{labels[int(l)]} pos {int(p)}" for l, p in mask.nonzero()[:limit]]
