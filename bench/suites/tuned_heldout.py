"""Suite ``tuned-heldout``: the cached tuned lenses scored on the whole held-out split, full
vocabulary, with bootstrap intervals (issue 11).

The fit report (suite ``tuned``) scores each lens on the first ~500-600 tokens of the held-out
split, to keep set-up short. This scores four lenses on all of it (the recipe's
``heldout_tokens``: 10,240, or ``--tokens``), through the same tiled full-vocabulary statistics
(:func:`lenslib.tuned.evaluate.evaluate_lens`), measured once (case ``score``: collecting the
residuals and scoring the four lenses):

- ``logit``: no translator;
- ``bias_only``: ``A = 0``, ``b`` = the mean of (output stream - layer stream) over
  ``BIAS_FIT_TOKENS`` tokens of the fitting split (:func:`lenslib.tuned.fit.bias_only_lens`, built
  as notebook 05 builds it), a baseline for what an offset alone gives;
- ``least_squares``: the tuned lens's least-squares start;
- ``tuned``: the cached tuned lens.

Per layer (and for the mean over all layers but the last), each lens's mean KL(final || lens)
has a bootstrap interval over the held-out windows (:meth:`LensEvaluation.bootstrap_kl`), and
each step of ``PAIRS`` a *paired* one (both lenses resampled on the same windows), so that a
difference whose interval contains 0 is called within the noise. The translators' SHA-256 and
the cache entry say which fitted lens the numbers describe. It checks the issue's targets on the
per-layer table.

    python -m bench tuned-heldout        # writes tuned_heldout.md and .json into bench/
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from bench.suite import Case, Defaults, Row, Suite
from bench.suites.tuned import heldout_targets

LENSES = ("logit", "bias_only", "least_squares", "tuned")
PAIRS = (("bias_only", "logit"), ("least_squares", "bias_only"), ("tuned", "least_squares"))  # (lens, versus)
BIAS_FIT_TOKENS = 1024  # fitting-split tokens the bias-only offsets are averaged over (as notebook 05)
BOOTSTRAP = {"n_resamples": 1000, "level": 0.95, "seed": 0}  # LensEvaluation.bootstrap_kl's defaults
DIGITS = 6  # decimals (nats) kept in the JSON's intervals: far below any interval's width


@dataclass
class Context(Row):
    model: object = None
    lenses: dict = None  # name -> TunedLens (None: the logit lens), in the order of LENSES
    texts: tuple = ()
    seq_len: int = 0  # tokens per held-out window, about (the recipe's)


def pair_name(lens: str, versus: str) -> str:
    """The JSON key of a paired difference: ``"tuned - least_squares"``."""
    return f"{lens} - {versus}"


def score(ctx: Context):
    from lenslib.tuned.evaluate import evaluate_lens
    from lenslib.tuned.fit import collect_residuals

    def run():
        held = collect_residuals(ctx.model, list(ctx.texts), progress=False)
        return held, evaluate_lens(ctx.model, ctx.lenses, held, progress=True)

    return run


def interval_columns(frame, point: str) -> dict:
    """``{point, "low", "high"}`` lists, one value per layer, from a :meth:`bootstrap_kl` frame."""
    return {key: [round(float(x), DIGITS) for x in frame[column]]
            for key, column in ((point, "kl_nats"), ("low", "low"), ("high", "high"))}


def mean_interval(found: dict, point: str) -> dict:
    """``{point, "low", "high"}`` from a :meth:`bootstrap_mean_kl` dict."""
    return {point: round(found["kl_nats"], DIGITS), "low": round(found["low"], DIGITS),
            "high": round(found["high"], DIGITS)}


def intervals(scores) -> dict:
    """Per layer but the last, each lens's mean KL and each pair's paired difference ``lens -
    versus`` (nats) with their bootstrap intervals over held-out windows; the same for the mean
    over those layers. Lists run over ``layers``; values are rounded to ``DIGITS`` decimals."""
    import torch

    lenses = {lens: interval_columns(scores.bootstrap_kl(lens, **BOOTSTRAP), "mean") for lens in LENSES}
    pairs = {pair_name(a, b): {"lens": a, "versus": b, **interval_columns(scores.bootstrap_kl(a, b, **BOOTSTRAP), "diff")}
             for a, b in PAIRS}
    means = {"lenses": {lens: mean_interval(scores.bootstrap_mean_kl(lens, **BOOTSTRAP), "mean") for lens in LENSES},
             "pairs": {pair_name(a, b): {"lens": a, "versus": b,
                                         **mean_interval(scores.bootstrap_mean_kl(a, b, **BOOTSTRAP), "diff")}
                       for a, b in PAIRS}}
    return {"over": "held-out windows (texts), drawn with replacement; pairs resampled on the same windows",
            "texts": int(torch.unique(scores.text_ids).numel()), **BOOTSTRAP,
            "layers": scores.layer_labels[:-1], "lenses": lenses, "pairs": pairs, "mean_but_last": means}


def read_scores(ctx: Context, result) -> dict:
    held, scores = result
    return {"heldout_tokens": held.n_tokens, "windows": len(ctx.texts), "window_tokens": ctx.seq_len,
            "mean_kl_nats_but_last": {k: scores.mean_kl(k) for k in LENSES},
            "intervals_nats": intervals(scores),
            "table": scores.table.to_dict(orient="records")}


def _table(ctx, entries):
    import pandas as pd

    found = entries.get("score", {})
    return pd.DataFrame.from_records(found["table"]) if "table" in found else None


CASES = (
    Case("score", "collect_residuals + evaluate_lens: logit, bias-only, least-squares and tuned lenses, full vocabulary",
         score, reps=1, read=read_scores, note=lambda e: f"{e['heldout_tokens']} tokens, {e['windows']} windows"),
)


def prepare(args: argparse.Namespace) -> dict:
    return {"lenses": {}}


def settings(args: argparse.Namespace) -> dict:
    return {"lenses": list(LENSES), "pairs": [pair_name(a, b) for a, b in PAIRS], "bootstrap": BOOTSTRAP,
            "bias_only_fit_tokens": BIAS_FIT_TOKENS}


def load(name: str, args: argparse.Namespace, report: dict):
    import lenslib
    from lenslib.tuned import corpus
    from lenslib.tuned.cache import entry_name
    from lenslib.tuned.evaluate import translators_sha256
    from lenslib.tuned.fit import bias_only_lens
    from lenslib.tuned.recipe import FitRecipe
    from lenslib.tuned.residuals import collect_residuals

    model = lenslib.load_model(name, device=args.device, dtype=args.torch_dtype)
    tuned = lenslib.tuned_lens(model, progress=False)
    start = lenslib.tuned_lens(model, least_squares=True, progress=False)
    recipe = tuned.record["fit"]["recipe"]
    fitting = corpus.split_texts(model.tokenizer, "fit", BIAS_FIT_TOKENS, seq_len=recipe["seq_len"], seed=recipe["seed"])
    fitting_resid = collect_residuals(model, fitting, progress=False)
    bias_only = bias_only_lens(model, fitting_resid)
    report["lenses"][name] = {
        "cache_entry": entry_name(name, FitRecipe.of(None)),  # what lenslib.tuned_lens(model) reads
        "recipe_key": FitRecipe.of(recipe).key(),
        "translators_sha256": {"tuned": translators_sha256(tuned), "least_squares": translators_sha256(start),
                               "bias_only": translators_sha256(bias_only)},
        "bias_only_fit": {"windows": len(fitting), "tokens": fitting_resid.n_tokens, "seq_len": recipe["seq_len"],
                          "seed": recipe["seed"]},
    }
    return model, {"logit": None, "bias_only": bias_only, "least_squares": start, "tuned": tuned}


def context(loaded, name: str, n_tokens, args: argparse.Namespace, report: dict) -> Context:
    from lenslib.tuned import corpus

    model, lenses = loaded
    recipe = lenses["tuned"].record["fit"]["recipe"]
    n_tokens = n_tokens or recipe["heldout_tokens"]
    texts = corpus.split_texts(model.tokenizer, "heldout", n_tokens, seq_len=recipe["seq_len"], seed=recipe["seed"])
    return Context(name=name, n_tokens=n_tokens, model=model, lenses=lenses, texts=tuple(texts),
                   seq_len=recipe["seq_len"])


# ---------------------------------------------------------------- the Markdown


def with_interval(point: float, low: float, high: float, signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{point:{sign}.3f} [{low:{sign}.3f}, {high:{sign}.3f}]"


def interval_table(found: dict, top1: dict) -> list[str]:
    """Markdown: one row per layer, each lens's KL and each pair's difference with its interval."""
    pairs = list(found["pairs"])
    lines = ["| layer | " + " | ".join(f"KL {k}" for k in found["lenses"]) + " | "
             + " | ".join(pairs) + " | " + " | ".join(f"top1 {k}" for k in top1) + " |",
             "|---|" + "---:|" * (len(found["lenses"]) + len(pairs) + len(top1))]
    for i, label in enumerate(found["layers"]):
        cells = [with_interval(v["mean"][i], v["low"][i], v["high"][i]) for v in found["lenses"].values()]
        cells += [with_interval(v["diff"][i], v["low"][i], v["high"][i], signed=True) for v in found["pairs"].values()]
        cells += [f"{v[i]:.3f}" for v in top1.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def noise_lines(found: dict) -> list[str]:
    """Per pair: the layers where its paired interval contains 0 (within the noise) or lies above 0."""
    lines = []
    for pair, v in found["pairs"].items():
        within = [l for l, lo, hi in zip(found["layers"], v["low"], v["high"]) if lo <= 0 <= hi]
        above = [l for l, lo in zip(found["layers"], v["low"]) if lo > 0]
        lines.append(f"- {pair}: interval contains 0 (within the noise) at {', '.join(within) or 'no layer'}; "
                     f"lies above 0 at {', '.join(above) or 'no layer'}.")
    return lines


def sections(report: dict) -> list[str]:
    from lenslib.tuned import corpus

    lines = []
    for e in report["results"]:
        if "intervals_nats" not in e:
            continue
        found, lens = e["intervals_nats"], report.get("lenses", {}).get(e["model"], {})
        top1 = {k: [r["top1_agreement"] for r in e["table"] if r["lens"] == k and r["label"] != "final_post"]
                for k in found["lenses"]}
        means = found["mean_but_last"]
        digests = lens.get("translators_sha256", {})
        bias = lens.get("bias_only_fit", {})
        lines += ["", f"## {e['model']}", "",
                  f"{e['heldout_tokens']} held-out tokens ({e['windows']} windows of about {e['window_tokens']} tokens "
                  "of the held-out split, "
                  f"{corpus.SOURCE}), scored in {e['median_s']:.0f} s.", "",
                  f"Lenses: tuned and least-squares from cache entry `{lens.get('cache_entry')}`; translators' SHA-256 "
                  "(first 12 hex digits): " + ", ".join(f"{k} `{v}`" for k, v in digests.items())
                  + f". Bias-only offsets from {bias.get('tokens')} fitting-split tokens ({bias.get('windows')} windows).",
                  "",
                  f"KL(final || lens) in nats with {found['level']:.0%} bootstrap intervals over the {found['texts']} "
                  f"held-out windows ({found['n_resamples']} resamples, seed {found['seed']}); the differences are "
                  "paired (both lenses on the same resampled windows); top-1 agreement with the final layer.", "",
                  *interval_table(found, top1), "",
                  "Mean over all layers but the last: "
                  + "; ".join(f"{k} {with_interval(v['mean'], v['low'], v['high'])}" for k, v in means["lenses"].items())
                  + ". Differences: "
                  + "; ".join(f"{k} {with_interval(v['diff'], v['low'], v['high'], signed=True)}"
                              for k, v in means["pairs"].items()) + ".", "",
                  "Which steps are within the noise, per layer:", *noise_lines(found)]
    return lines


SUITE = Suite(
    name="tuned-heldout",
    title="Tuned lenses on the whole held-out split (issue 11)",
    about="The logit lens, a bias-only translator, the least-squares start and the tuned lens scored on "
          "the whole held-out split (full vocabulary), with bootstrap intervals over held-out windows, "
          "and the issue's targets on that.",
    stem="tuned_heldout",
    tokens_mean="held-out tokens scored (default: the recipe's heldout_tokens)",
    cases=CASES,
    targets=heldout_targets(_table),
    load=load,
    context=context,
    defaults=Defaults(models=("smollm2-135m", "gemma-3-270m")),
    settings=settings,
    prepare=prepare,
    sections=sections,
    merged=("lenses",),
)
