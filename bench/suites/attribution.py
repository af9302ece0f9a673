"""Suite ``attribution``: attribution and patching against the targets of issue 12.

Per model, in one process, the cases in this order:

  patch      ``patch_layers`` on a clean/corrupt pair of exactly ``--tokens`` tokens (BOS
             included), every layer x every position, measured once, first: right after loading
             the model and one plain forward pass (the weights are memory-mapped and only
             resident once used). Its memory is the process's peak resident set during the call
             (weights included) and its rise over the resident set before the call; after it,
             file-backed pages (the weights, shared libraries) and anonymous memory are recorded.
  sum        ``attribute``'s sum check, measured once: max over 8 recall prompts of
             ``|contributions.sum() + constant - total| / |total|``
  attribute  ``attribute(model, prompt, target=answer)``, warmed up, ``--reps`` repetitions
  lens_last  ``logit_lens(model, prompt, positions="last", target=answer)``, the same

    python -m bench attribution                          # gemma-3-270m and smollm2-135m
    python -m bench attribution --models gemma-3-270m --reps 5 --dtype bf16

Writes ``attribution_results.json`` and ``attribution_results.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from bench.measure import status_bytes
from bench.suite import Case, Defaults, Ratio, Row, Suite, Target

CLEAN = "The famous {} is located in the city of"
PAIRS = {"gemma-3-270m": ("Eiffel Tower", "Colosseum", " Paris", " Rome"),
         "smollm2-135m": ("Eiffel Tower", "Colosseum", " Paris", " Rome")}
PROMPT, ANSWER = "The Eiffel Tower is located in the city of", " Paris"
SUM_PROMPTS = 8


@dataclass
class Context(Row):
    model: object = None
    clean: str = ""
    corrupt: str = ""
    answer: str = ""
    versus: str = ""
    batch_size: int = 32


def pair(model, name: str, n_tokens: int) -> tuple[str, str, str, str]:
    """A clean/corrupt pair of exactly ``n_tokens`` tokens each, padded in front with ``Yes.``."""
    if name not in PAIRS:
        raise SystemExit(f"no clean/corrupt pair for {name}; this suite has pairs for {', '.join(PAIRS)}")
    subject, other, answer, versus = PAIRS[name]
    clean, corrupt = CLEAN.format(subject), CLEAN.format(other)
    n_clean, n_corrupt = (model.to_tokens(p).shape[1] for p in (clean, corrupt))
    if n_clean != n_corrupt:
        raise SystemExit(f"{name}: the pair tokenizes to {n_clean} and {n_corrupt} tokens")
    pad = n_tokens - n_clean
    if pad < 0:
        raise SystemExit(f"{name}: the pair is {n_clean} tokens, more than --tokens {n_tokens}")
    prefix = "Yes. " * pad  # each ' Yes.' adds tokens; trim to the exact length below
    for cut in range(len(prefix), -1, -1):
        c, k = prefix[:cut] + clean, prefix[:cut] + corrupt
        if model.to_tokens(c).shape[1] == n_tokens == model.to_tokens(k).shape[1]:
            return c, k, answer, versus
    raise SystemExit(f"{name}: could not build a {n_tokens}-token pair")


def sum_check(model) -> dict:
    """The worst relative residual of ``attribute``'s decomposition over the first recall prompts."""
    from lenslib.causal.attribution import attribute
    from lenslib.recall.dataset import load_recall_dataset

    items = [it for it in load_recall_dataset("country_capital")[:SUM_PROMPTS]]
    worst = 0.0
    for item in items:
        ids = model.tokenizer.encode(item.answer, add_special_tokens=False)
        result = attribute(model, item.prompt, target=ids[0])
        worst = max(worst, abs(result.residual) / max(abs(result.total), 1e-12))
    return {"prompts": len(items), "max_relative_residual": worst}


def patching(ctx: Context):
    from lenslib.causal.patching import patch_layers

    return lambda: patch_layers(ctx.model, ctx.clean, ctx.corrupt, target=ctx.answer, versus=ctx.versus,
                                batch_size=ctx.batch_size)


def read_patch(ctx: Context, result) -> dict:
    layer, pos, best = result.best()
    return {
        "clean": ctx.clean, "corrupt": ctx.corrupt, "batch_size": ctx.batch_size,
        "layers_x_positions": list(result.restored.shape),
        "clean_logit_diff": result.clean_value, "corrupt_logit_diff": result.corrupt_value,
        "best_patch": [layer, pos, best],
        # right after patching: file-backed pages (the mmapped safetensors weights, shared
        # libraries; the kernel can drop and re-read them) and anonymous memory (heap, tensors)
        "rss_file_bytes_after": status_bytes("RssFile"),
        "rss_anon_bytes_after": status_bytes("RssAnon"),
    }


def attribute_prompt(ctx: Context):
    from lenslib.causal.attribution import attribute

    return lambda: attribute(ctx.model, PROMPT, target=ANSWER)


def lens_last(ctx: Context):
    import lenslib

    return lambda: lenslib.logit_lens(ctx.model, PROMPT, positions="last", target=ANSWER)


CASES = (
    Case("patch", "patch_layers, every layer x every position", patching, reps=1, read=read_patch,
         note=lambda e: f"{e['layers_x_positions'][0]} x {e['layers_x_positions'][1]}, peak "
                        f"{e['peak_bytes'] / 1e9:.2f} GB, best patch {e['best_patch']}"),
    Case("sum", f"attribute's sum check over {SUM_PROMPTS} recall prompts", lambda c: lambda: sum_check(c.model),
         reps=1, read=lambda c, found: found,
         note=lambda e: f"max relative residual {e['max_relative_residual']:.2e}"),
    Case("attribute", "attribute(model, prompt, target=answer)", attribute_prompt, warm_up=True),
    Case("lens_last", "logit_lens(model, prompt, positions='last', target=answer)", lens_last, warm_up=True),
)
RATIOS = (
    Ratio("attribute/lens_last", ("attribute",), ("lens_last",),
          "attribution of one prompt against a plain positions='last' lens", at_most=1.5),
)


def _gemma_patch(limit, field, unit):
    def check(ctx: Context, entries: dict):
        e = entries.get("patch", {})
        if ctx.name != "gemma-3-270m" or ctx.n_tokens != 16 or "median_s" not in e:
            return None
        return e[field] / unit <= limit, f"{e[field] / unit:.3g}"

    return check


TARGETS = (
    Target("sum check: max relative residual <= 1e-4",
           lambda ctx, e: None if "max_relative_residual" not in e.get("sum", {}) else (
               e["sum"]["max_relative_residual"] <= 1e-4, f"{e['sum']['max_relative_residual']:.2e}")),
    Target("patching Gemma, 16 tokens: at most 90 s", _gemma_patch(90, "median_s", 1)),
    Target("patching Gemma, 16 tokens: at most 1.5 GB peak resident set (weights included)",
           _gemma_patch(1.5, "peak_bytes", 1e9)),
)


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=32, help="patched runs per forward pass (default 32)")


def load(name: str, args: argparse.Namespace, report: dict):
    import lenslib

    return lenslib.load_model(name, device=args.device, dtype=args.torch_dtype)


def context(model, name: str, n_tokens: int, args: argparse.Namespace, report: dict) -> Context:
    clean, corrupt, answer, versus = pair(model, name, n_tokens)
    with torch.no_grad():  # one plain forward first: the weights are paged in (mmap) on first use
        model(model.to_tokens(clean))
    return Context(name=name, n_tokens=n_tokens, model=model, clean=clean, corrupt=corrupt, answer=answer,
                   versus=versus, batch_size=args.batch_size)


SUITE = Suite(
    name="attribution",
    title="Attribution and patching benchmark (issue 12)",
    about="patch_layers' time and peak memory, attribute's sum check, and attribute against a "
          "positions='last' lens.",
    stem="attribution_results",
    tokens_mean="tokens of each prompt of the clean/corrupt pair, BOS included",
    cases=CASES,
    ratios=RATIOS,
    targets=TARGETS,
    load=load,
    context=context,
    defaults=Defaults(models=("gemma-3-270m", "smollm2-135m"), tokens=(16,), reps=5),
    dtypes=("fp32", "bf16"),
    options=options,
    settings=lambda args: {"batch_size": args.batch_size, "prompt": PROMPT, "answer": ANSWER, "pairs": PAIRS},
)
