"""Suite ``lens``: the logit lens against its floor, the naive path, TransformerLens's own lens and
the forward pass (issues 6 and 14).

For each model and prompt length (exactly N tokens run, BOS included, of real English text from
``bench/passage.txt``), in one process, median of ``--reps`` repetitions of wall time and peak
extra memory, the cases interleaved within each repetition (so a slow spell on a shared machine
falls on every case alike). The cases, in the order each repetition runs them:

  a   ``lenslib.logit_lens(model, text)``: all positions, all statistics
  b   ``lenslib.logit_lens(model, text, positions="last")``
  d   the floor: the unembedding matmul alone over the same layer x pos x d_model x d_vocab,
      tiled exactly as ``lenslib.core.stats`` tiles it, on the same library (``lenslib.core.onednn``)
  d_torch  the same tiles on ``torch.mm`` (MKL on CPU): the floor before lenslib used oneDNN
  e   the bridge's forward pass, ``model(tokens)`` (logits for every position)
  e'  a separate Hugging Face model object, SDPA attention, last position's logits only: what a
      user pays for the model's own prediction
  f   the lens's own forward: the residual stream as ``logit_lens`` gets it
      (``lenslib.core.forward``: SDPA where exact) and ``accumulated_resid(apply_ln=True)``
  f_bridge  the same through the bridge's ``run_with_cache`` (eager attention)
  g   TransformerLens 4.3's ``tools.analysis.logit_lens``, ``top_k=5``, all positions, probs
  g_t the same with per-row ``targets`` (the next token): it takes ``top_k`` or ``targets`` per
      call, so matching what (a) returns takes g and g_t
  c   the naive path: ``run_with_cache`` -> ``accumulated_resid(apply_ln=True)`` -> ``unembed``
      -> ``log_softmax``, entropy, top-5, KL on the whole ``[layer, pos, d_vocab]`` tensor;
      skipped, with its estimated memory, when that exceeds ``--naive-mem-limit-gb``

The ratios and their targets are declared below (``RATIOS``); the agreement of (a) with (g, g_t)
is checked on the last repetition's results.

    python -m bench lens                        # both real models, 128..2048 tokens, CPU
    python -m bench lens --tiny                 # tiny random model, a few seconds
    python -m bench lens --device cuda --dtype bf16

Writes ``results.json``, ``results.md``, ``results.png`` and ``ratios.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

import torch

from bench.passage import PASSAGE, PASSAGE_SOURCE, passage_text, prompt_of_length
from bench.report import ratio_figure, time_figure
from bench.suite import Case, Defaults, Ratio, Row, Suite, ratio_target
from bench.suites.lens_agreement import agreement, agreement_lines

TOP_K = 5
# Peak extra memory of the naive path, in [layer, pos, d_vocab]-sized tensors. This code measured
# +3.46 GB on smollm2-135m at 128 tokens (0.78 GB of logits: logits, log-probs, their exp and a
# product live at once), i.e. 4.4; shared/MODELS.md's +2.0 GB (smollm2) and +6.3 GB (gemma-3-270m)
# at 128 tokens, from another script, are 2.5. The larger is used, so a skip errs on the safe side.
NAIVE_LIVE_TENSORS = 4.5
SETTLE_S = 10.0  # idle time after the naive path frees its memory


@dataclass
class Context(Row):
    """Everything a case may need for one model and prompt length."""

    model: object = None  # the TransformerBridge
    prompt: str = ""
    tokens: Optional[torch.Tensor] = None  # [1, n_tokens], BOS included, on the device
    device: str = "cpu"
    dtype: str = "fp32"
    hf_sdpa: object = None  # a separate Hugging Face model object with SDPA attention
    resid: Optional[torch.Tensor] = None  # [layer, pos, d_model], what the lens decodes
    forward_path: str = ""  # "sdpa" or "bridge": how logit_lens gets the residual stream
    naive_limit: int = 0
    naive_limit_rule: str = ""
    tl_max_tokens: int = 0

    @property
    def n_layer(self) -> int:
        return int(self.model.cfg.n_layers) + 1  # accumulated_resid: embeddings + each block's output


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

    from lenslib.models.loading import hf_model_dir

    if name == "tiny-llama":
        from lenslib.models.random_weights import tiny_hf_model

        hf = tiny_hf_model(seed=0)[0].to(dtype)
        hf.set_attn_implementation("sdpa")
    else:
        hf = AutoModelForCausalLM.from_pretrained(hf_model_dir(name), dtype=dtype, attn_implementation="sdpa")
    return hf.to(device).eval()


def naive_estimate(ctx: Context) -> int:
    """Bytes the naive path is expected to need on top of the model (``NAIVE_LIVE_TENSORS`` logits)."""
    bits = torch.finfo(ctx.model.W_U.dtype).bits
    return int(NAIVE_LIVE_TENSORS * ctx.n_layer * ctx.n_tokens * int(ctx.model.cfg.d_vocab) * bits // 8)


def naive_limit_bytes(device: str, limit_gb: Optional[float]) -> tuple[int, str]:
    """The memory case c may take before it is skipped, and the rule that set it."""
    if limit_gb is not None:
        return int(limit_gb * 1e9), f"--naive-mem-limit-gb {limit_gb}"
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return int(0.8 * free), "80% of the GPU memory free at start"
    import psutil

    available = psutil.virtual_memory().available
    margin = max(2e9, 0.2 * available)
    return int(available - margin), "RAM available at start minus max(2 GB, 20%)"


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


def _forward_path(ctx: Context) -> dict:
    return {"forward_path": ctx.forward_path}


def _forward_note(entry: dict) -> str:
    return f"forward path: {entry['forward_path']}"


# ---------------------------------------------------------------- the declaration

# Timed in this order in each repetition; the naive path last (it frees gigabytes, after which
# this VM ran the next case slower: the floor came out slower than the lens, Gemma 128 tokens).
CASES = (
    Case("a", "logit_lens, all positions", lambda c: lambda: case_lens(c.model, c.prompt, None),
         colour="#1f77b4", keep=True, facts=_forward_path, note=_forward_note),
    Case("b", "logit_lens, last position", lambda c: lambda: case_lens(c.model, c.prompt, "last"),
         colour="#2ca02c", facts=_forward_path, note=_forward_note),
    Case("d", "floor: tiled unembedding matmul", _floor, colour="#7f7f7f",
         note=lambda e: f"{e['gflop_per_s']:.1f} GFLOP/s"),
    Case("d_torch", "the same tiles on torch.mm (MKL on CPU), the floor before lenslib used oneDNN",
         lambda c: _floor(c, backend="torch.mm"), colour="#c7c7c7"),
    Case("e", "forward pass (bridge, all logits)", lambda c: lambda: case_forward(c.model, c.tokens),
         colour="#ff7f0e"),
    Case("e'", "Hugging Face forward, SDPA, last logits only", lambda c: lambda: case_hf_sdpa(c.hf_sdpa, c.tokens),
         colour="#bcbd22"),
    Case("f", "the lens's forward: residual stream + accumulated_resid",
         lambda c: lambda: normalised_resid(c.model, c.tokens), colour="#9467bd", facts=_forward_path,
         note=_forward_note),
    Case("f_bridge", "the bridge's forward: run_with_cache + accumulated_resid",
         lambda c: lambda: normalised_resid(c.model, c.tokens, forward="bridge"), colour="#8c564b"),
    Case("g", "TransformerLens tools.analysis.logit_lens, top-5 pass",
         lambda c: lambda: case_tl_top_k(c.model, c.tokens), skip=_tl_skip, colour="#e377c2", keep=True),
    Case("g_t", "TransformerLens tools.analysis.logit_lens, targets pass",
         lambda c: lambda: case_tl_targets(c.model, c.tokens), skip=_tl_skip, colour="#17becf", keep=True),
    Case("c", "naive TransformerLens lens", lambda c: lambda: case_naive(c.model, c.tokens),
         skip=_naive_skip, colour="#d62728", settle_s=SETTLE_S,
         facts=lambda c: {"estimated_peak_extra_bytes": naive_estimate(c)},
         note=lambda e: f"estimated {e['estimated_peak_extra_bytes'] / 1e6:.1f} MB"),
)

# Targets: issue 6 (a/d, b/e on this 2-core CPU; a/d on CUDA at 2048 tokens) and issue 14.
RATIOS = (
    Ratio("a/d", ("a",), ("d",), "the lens against its floor, the tiled unembedding matmul",
          at_most=1.3, from_tokens=512, device="cpu", plot=True),
    Ratio("a/(d+f)", ("a",), ("d", "f"), "what the lens adds beyond its forward and the matmuls",
          at_most=1.1, from_tokens=512, plot=True),
    Ratio("(d+f)/d", ("d", "f"), ("d",), "the best a/d this forward allows"),
    Ratio("a/d_torch", ("a",), ("d_torch",), "the lens against the same tiles' matmuls on torch.mm (MKL)"),
    Ratio("d/d_torch", ("d",), ("d_torch",), "oneDNN's matmuls against MKL's"),
    Ratio("a/g_tl_builtin", ("a",), ("g",), "lenslib against TransformerLens's own lens, its top-5 pass alone",
          at_most=0.4, from_tokens=128, plot=True),
    Ratio("a/(g+g_t)_tl_builtin", ("a",), ("g", "g_t"), "against the two calls it needs for top-5 and targets"),
    Ratio("b/e'", ("b",), ("e'",), "a last-position lens against the Hugging Face SDPA forward with last "
          "logits only", at_most=1.2, plot=True),
    Ratio("f/e'", ("f",), ("e'",), "the lens's forward against that forward", at_most=1.15, from_tokens=512,
          plot=True),
    Ratio("f_bridge/e'", ("f_bridge",), ("e'",), "the bridge's own forward against it"),
    Ratio("b/e", ("b",), ("e",), "a last-position lens against the bridge's forward", at_most=1.2),
    Ratio("a/c", ("a",), ("c",), "the lens against the naive path"),
)
TARGETS = (ratio_target(RATIOS[0], 3.0, from_tokens=2048, device="cuda"),)


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tl-max-tokens", type=int, default=None,
                        help="run TransformerLens's lens (g, g_t) up to this many tokens (default 512, "
                             "no limit with --tiny; it is the slowest case)")
    parser.add_argument("--naive-mem-limit-gb", type=float, default=None,
                        help="skip case c when its estimated memory exceeds this (default: the "
                             "memory available now minus a safety margin)")


def prepare(args: argparse.Namespace) -> dict:
    if args.tl_max_tokens is None:
        args.tl_max_tokens = 10**9 if args.tiny else 512
    args.naive_limit, args.naive_limit_rule = naive_limit_bytes(args.device, args.naive_mem_limit_gb)
    text = passage_text()
    return {"text": {"file": PASSAGE.name, "source": PASSAGE_SOURCE, "words": len(text.split()), "per_prompt": []},
            "forward_paths": {}, "agreement": []}


def settings(args: argparse.Namespace) -> dict:
    from lenslib.core.stats import DEFAULT_CHUNK_BYTES, TILE_COLUMNS

    return {
        "top_k": TOP_K, "chunk_bytes": DEFAULT_CHUNK_BYTES, "tile_columns": TILE_COLUMNS,
        "naive_mem_limit_bytes": args.naive_limit, "naive_mem_limit_rule": args.naive_limit_rule,
        "naive_live_tensors": NAIVE_LIVE_TENSORS, "tl_max_tokens": args.tl_max_tokens,
        "tokens_counted": "tokens run, BOS included (= positions decoded by a, c and g)",
        "grad": "every case runs under torch.no_grad()",
        "order": "each repetition runs every case once, in the order of 'cases'",
    }


def load(name: str, args: argparse.Namespace, report: dict):
    import lenslib
    from lenslib.core.bridge import residual_hooks
    from lenslib.core.forward import sdpa_unavailable_reason

    model = lenslib.load_model(name, device=args.device, dtype=args.torch_dtype)
    hf_sdpa = load_hf_sdpa(name, args.torch_dtype, args.device) if "e'" in args.cases else None
    reason = sdpa_unavailable_reason(model, residual_hooks(int(model.cfg.n_layers), False))
    report["forward_paths"][name] = "bridge" if reason else "sdpa"
    with torch.no_grad():  # warm-up: first calls allocate, pick kernels, build the SDPA shadow
        warm, warm_tokens, _ = prompt_of_length(model, passage_text(), min(16, int(model.cfg.n_ctx)))
        case_lens(model, warm, None)
        case_forward(model, warm_tokens.to(args.device))
        if hf_sdpa is not None:
            case_hf_sdpa(hf_sdpa, warm_tokens.to(args.device))
    return model, hf_sdpa


def context(loaded, name: str, n_tokens: int, args: argparse.Namespace, report: dict):
    model, hf_sdpa = loaded
    if n_tokens > int(model.cfg.n_ctx):
        return f"{n_tokens} tokens exceeds its context {model.cfg.n_ctx}"
    prompt, tokens, copies = prompt_of_length(model, passage_text(), n_tokens)
    report["text"]["per_prompt"].append({"model": name, "tokens": n_tokens, "chars": len(prompt), "passage_copies": copies})
    ctx = Context(name=name, n_tokens=n_tokens, model=model, prompt=prompt, tokens=tokens.to(args.device),
                  device=args.device, dtype=args.dtype, hf_sdpa=hf_sdpa, forward_path=report["forward_paths"][name],
                  naive_limit=args.naive_limit, naive_limit_rule=args.naive_limit_rule,
                  tl_max_tokens=args.tl_max_tokens)
    with torch.no_grad():
        ctx.resid = normalised_resid(model, ctx.tokens)
    return ctx


def entry(ctx: Context) -> dict:
    cfg = ctx.model.cfg
    return {"device": ctx.device, "dtype": ctx.dtype, "n_layer": ctx.n_layer, "d_model": int(cfg.d_model),
            "d_vocab": int(cfg.d_vocab)}


def after_row(ctx: Context, entries: dict, kept: dict, report: dict) -> None:
    floor = entries.get("d", {})
    if "median_s" in floor:
        flops = 2 * ctx.n_layer * ctx.n_tokens * floor["d_model"] * floor["d_vocab"]
        floor["gflop_per_s"] = flops / floor["median_s"] / 1e9
    if "a" in kept and "g" in kept:
        found = agreement(kept["a"], kept["g"], kept.get("g_t"))
        report["agreement"].append({"model": ctx.name, "tokens": ctx.n_tokens, **found})
        print(f"[bench] {ctx.name} {ctx.n_tokens:>5} agreement with TransformerLens: {found}", flush=True)


def preamble(report: dict) -> list[str]:
    m, s = report["machine"], report["settings"]
    paths = ", ".join(sorted(set(report.get("forward_paths", {}).values()))) or "?"
    return [f"Lens statistics: {m.get('lens_statistics', 'not recorded')}; tile matmuls: "
            f"{m.get('lens_matmul', 'not recorded')}; tiles of {s.get('tile_columns', '?')} vocabulary "
            f"columns, {s['chunk_bytes'] / 2**20:g} MiB. Lens forward path: {paths}."]


def sections(report: dict) -> list[str]:
    lines = agreement_lines(report.get("agreement", []))
    text = report["text"]
    repeated = [p for p in text["per_prompt"] if p["passage_copies"] > 1]
    lines += ["", f"Text: `bench/{text['file']}`, {text['words']} words. {text['source']}"]
    if repeated:
        lines.append("Prompts that repeat the passage: " + ", ".join(
            f"{p['model']} {p['tokens']} tokens ({p['passage_copies']} copies)" for p in repeated) + ".")
    return lines


SUITE = Suite(
    name="lens",
    title="Logit-lens benchmark (issues 6 and 14)",
    about="The logit lens against its floor (the tiled unembedding matmul), the naive path, "
          "TransformerLens's own lens and the forward pass, on prompts of exactly N tokens.",
    stem="results",
    tokens_mean="tokens run, BOS included",
    cases=CASES,
    ratios=RATIOS,
    targets=TARGETS,
    load=load,
    context=context,
    defaults=Defaults(models=("gemma-3-270m", "smollm2-135m"), tokens=(128, 512, 2048), reps=3),
    # One thread for the tiny model: its ops are too small to share, and two OpenMP threads on a
    # busy two-core machine wait on each other (0.5 s instead of 0.02 s per forward pass).
    tiny=Defaults(models=("tiny-llama",), tokens=(16, 32, 64), reps=2, threads=1),
    devices=("cpu", "cuda"),
    dtypes=("fp32", "bf16"),
    options=options,
    settings=settings,
    prepare=prepare,
    entry=entry,
    after_row=after_row,
    preamble=preamble,
    sections=sections,
    figures=(("results.png", time_figure, "time vs tokens, log-log"), ("ratios.png", ratio_figure, "time ratios")),
    lengths_outer=True,
    row_lists=("agreement", "text.per_prompt"),
    merged=("forward_paths",),
)
