"""Suite ``components``: component patching, single heads and the component lens (issue 22).

Per model, on a clean/corrupt pair of exactly ``--tokens`` tokens (BOS included) that differ
from the third token on, "The Eiffel Tower, a famous old landmark, is located in the city of"
against "The Colosseum, ...", words of the phrase after the subject added or dropped to reach
the length (``pair``), with the answer " Paris" against " Rome", the cases:

  attn_mlp         ``patch_components`` with ``site="attn"`` then ``site="mlp"``: every block x
                   every position, denoising, on the default forward path (fused attention,
                   starting each batch at its first patched block and position); patches that
                   provably change nothing are not run (``skip_no_ops``: the two positions
                   before the subject, the last block away from the last position)
  attn_mlp_every   the same with ``skip_no_ops=False``: every one of the patches is run
  attn_mlp_noise   the same, noising (corrupt activations into the clean run)
  attn_mlp_bridge  the same denoising sweep on TransformerLens's hooks (a whole forward pass per
                   batch of 32 patches): what the engine's shortcuts save; measured once
  heads_last       ``site="head"``, every block x every head at the last position (not on
                   Gemma 3, which refuses single heads)
  lens             ``component_lens`` at the last position (top 5 tokens of every output)

    python -m bench components                          # gemma-3-270m and smollm2-135m, 16 tokens
    python -m bench components --models smollm2-135m --cases heads_last --reps 5

Writes ``component_results.json`` and ``component_results.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from bench.suite import Case, Defaults, Ratio, Row, Suite, Target

SUBJECTS, ANSWER, VERSUS = ("Eiffel Tower", "Colosseum"), " Paris", " Rome"
WORDS = ("a", "famous", "old", "landmark", "that", "many", "tourists", "visit", "every", "single", "year",
         "from", "all", "over", "the", "world")


@dataclass
class Context(Row):
    model: object = None
    clean: str = ""
    corrupt: str = ""
    answer: str = ""
    versus: str = ""
    batch_size: int = 32


def pair(model, name: str, n_tokens: int) -> tuple[str, str]:
    """The clean and corrupt prompts of exactly ``n_tokens`` tokens each (see the docstring)."""
    for j in range(len(WORDS) + 1):
        filler = f", {' '.join(WORDS[:j])}," if j else ""
        clean, corrupt = (f"The {s}{filler} is located in the city of" for s in SUBJECTS)
        if model.to_tokens(clean).shape[1] == n_tokens == model.to_tokens(corrupt).shape[1]:
            return clean, corrupt
    raise SystemExit(f"{name}: no pair of exactly {n_tokens} tokens from the phrase; try 10 to 24 tokens")


def _sweep(direction: str, forward: str, skip_no_ops: bool = True):
    def make(ctx: Context):
        from lenslib.causal.components import patch_components

        def run():
            return [patch_components(ctx.model, ctx.clean, ctx.corrupt, target=ctx.answer, versus=ctx.versus,
                                     site=site, direction=direction, forward=forward, batch_size=ctx.batch_size,
                                     skip_no_ops=skip_no_ops)
                    for site in ("attn", "mlp")]

        return run

    return make


def _best(best) -> str:
    label, pos, effect = best
    return f"{label} at {pos}: {effect:.2f}"


def _read_sweep(ctx: Context, results) -> dict:
    return {"clean": ctx.clean, "corrupt": ctx.corrupt, "batch_size": ctx.batch_size,
            "patches": sum(r.restored.numel() for r in results),
            "shape": [list(r.restored.shape) for r in results],
            "best": [list(r.best()) for r in results]}


def _heads(ctx: Context):
    from lenslib.causal.components import patch_components

    return lambda: patch_components(ctx.model, ctx.clean, ctx.corrupt, target=ctx.answer, versus=ctx.versus,
                                    site="head", positions="last", batch_size=ctx.batch_size)


def _read_heads(ctx: Context, result) -> dict:
    from lenslib.causal.attention import heads_that_matter

    return {"patches": result.restored.numel(), "best": list(result.best()),
            "heads_that_matter": [list(h) for h in heads_that_matter(result, n=4)]}


def _no_heads(ctx: Context):
    from lenslib.causal.attribution import has_post_attention_norm

    return "single heads are refused on this model (post-attention norm)" if has_post_attention_norm(ctx.model) else None


def _lens(ctx: Context):
    from lenslib.causal.component_lens import component_lens

    return lambda: component_lens(ctx.model, ctx.clean, target=ctx.answer, k=5)


def _read_lens(ctx: Context, lens) -> dict:
    top = int(lens.attn.abs().argmax())
    return {"largest_attention_block": top, "its_logits": float(lens.attn[top]),
            "reads_from": [list(s) for s in lens.top_sources(top, n=2)], "residual": lens.residual}


CASES = (
    Case("attn_mlp", "patch_components, attn + mlp, every block x position, denoising", _sweep("denoising", "auto"),
         warm_up=True, read=_read_sweep,
         note=lambda e: f"{e['patches']} patches; largest effects {', '.join(map(_best, e['best']))}"),
    Case("attn_mlp_every", "the same, every patch run (skip_no_ops=False)", _sweep("denoising", "auto", False),
         read=_read_sweep, note=lambda e: f"{e['patches']} patches"),
    Case("attn_mlp_noise", "the same, noising", _sweep("noising", "auto"), read=_read_sweep,
         note=lambda e: f"{e['patches']} patches; largest effects {', '.join(map(_best, e['best']))}"),
    Case("attn_mlp_bridge", "the same denoising sweep on TransformerLens hooks (forward='bridge')",
         _sweep("denoising", "bridge"), reps=1, read=_read_sweep, note=lambda e: f"{e['patches']} patches"),
    Case("heads_last", "patch_components, site='head', every block x head at the last position", _heads,
         skip=_no_heads, warm_up=True, read=_read_heads,
         note=lambda e: f"{e['patches']} patches; largest effects {_best(e['best'])}; heads_that_matter "
                        f"{[tuple(h) for h in e['heads_that_matter']]}"),
    Case("lens", "component_lens at the last position, top 5 tokens per output", _lens, warm_up=True,
         read=_read_lens,
         note=lambda e: f"largest attention output: block {e['largest_attention_block']} "
                        f"({e['its_logits']:+.2f} logits), from " + ", ".join(
                            f"{k} {t!r} {v:+.2f}" for k, t, v in e["reads_from"])),
)
RATIOS = (
    Ratio("attn_mlp/attn_mlp_bridge", ("attn_mlp",), ("attn_mlp_bridge",),
          "the engine (fused attention, batches from their first patched block and position) against "
          "TransformerLens's hooks running every batch from the embeddings"),
)


def _within(model: str, case: str, seconds: float):
    def check(ctx: Context, entries: dict):
        e = entries.get(case, {})
        if ctx.name != model or ctx.n_tokens != 16 or "median_s" not in e:
            return None
        return e["median_s"] <= seconds, f"{e['median_s']:.2f} s, peak {e['peak_bytes'] / 1e9:.2f} GB"

    return check


TARGETS = (
    Target("Gemma 3, 18 blocks x {attention, MLP} x 16 positions: at most 20 s", _within("gemma-3-270m", "attn_mlp", 20)),
    Target("the same with every patch run: at most 20 s", _within("gemma-3-270m", "attn_mlp_every", 20)),
    Target("SmolLM2, 30 blocks x 9 heads at the last position: at most 30 s", _within("smollm2-135m", "heads_last", 30)),
)


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=32, help="patched runs per forward pass (default 32)")


def load(name: str, args: argparse.Namespace, report: dict):
    import lenslib

    return lenslib.load_model(name, device=args.device, dtype=args.torch_dtype)


def context(model, name: str, n_tokens: int, args: argparse.Namespace, report: dict) -> Context:
    clean, corrupt = pair(model, name, n_tokens)
    with torch.no_grad():  # one plain forward first: the weights are paged in (mmap) on first use
        model(model.to_tokens(clean))
    return Context(name=name, n_tokens=n_tokens, model=model, clean=clean, corrupt=corrupt, answer=ANSWER,
                   versus=VERSUS, batch_size=args.batch_size)


SUITE = Suite(
    name="components",
    title="Component patching benchmark (issue 22)",
    about="patch_components over attention and MLP outputs (both directions, and on TransformerLens hooks), "
          "single heads at the last position, and component_lens; time and peak memory.",
    stem="component_results",
    tokens_mean="tokens of each prompt of the clean/corrupt pair, BOS included",
    cases=CASES,
    ratios=RATIOS,
    targets=TARGETS,
    load=load,
    context=context,
    defaults=Defaults(models=("gemma-3-270m", "smollm2-135m"), tokens=(16,), reps=3),
    options=options,
    settings=lambda args: {"batch_size": args.batch_size, "subjects": SUBJECTS, "answer": ANSWER, "versus": VERSUS},
)
