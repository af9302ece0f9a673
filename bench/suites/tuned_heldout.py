"""Suite ``tuned-heldout``: the cached tuned lenses scored on the whole held-out split, full
vocabulary (issue 11).

The fit report (suite ``tuned``) scores each lens on the first ~500-600 tokens of the held-out
split, to keep set-up short. This scores the logit lens, the least-squares start and the tuned
lens on all of it (the recipe's ``heldout_tokens``: 10,240, or ``--tokens``), through the same
tiled full-vocabulary statistics (:func:`lenslib.tuned.evaluate.evaluate_lens`), measured once
(case ``score``: collecting the residuals and scoring three lenses), and checks the issue's
targets on that table.

    python -m bench tuned-heldout        # writes tuned_heldout.md and .json into bench/
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from bench.suite import Case, Defaults, Row, Suite
from bench.suites.tuned import heldout_targets

LENSES = ("logit", "least_squares", "tuned")


@dataclass
class Context(Row):
    model: object = None
    tuned: object = None
    start: object = None  # the least-squares start
    texts: tuple = ()


def score(ctx: Context):
    from lenslib.tuned.evaluate import evaluate_lens
    from lenslib.tuned.fit import collect_residuals

    def run():
        held = collect_residuals(ctx.model, list(ctx.texts), progress=False)
        scores = evaluate_lens(ctx.model, {"logit": None, "least_squares": ctx.start, "tuned": ctx.tuned}, held,
                               progress=True)
        return held, scores

    return run


def read_scores(ctx: Context, result) -> dict:
    held, scores = result
    return {"heldout_tokens": held.n_tokens, "windows": len(ctx.texts),
            "mean_kl_nats_but_last": {k: scores.mean_kl(k) for k in LENSES},
            "table": scores.table.to_dict(orient="records")}


def _table(ctx, entries):
    import pandas as pd

    found = entries.get("score", {})
    return pd.DataFrame.from_records(found["table"]) if "table" in found else None


CASES = (
    Case("score", "collect_residuals + evaluate_lens: logit, least-squares and tuned lenses, full vocabulary",
         score, reps=1, read=read_scores, note=lambda e: f"{e['heldout_tokens']} tokens, {e['windows']} windows"),
)


def load(name: str, args: argparse.Namespace, report: dict):
    import lenslib

    model = lenslib.load_model(name, device=args.device, dtype=args.torch_dtype)
    return model, lenslib.tuned_lens(model, progress=False), lenslib.tuned_lens(model, least_squares=True,
                                                                                progress=False)


def context(loaded, name: str, n_tokens, args: argparse.Namespace, report: dict) -> Context:
    from lenslib.tuned import corpus

    model, tuned, start = loaded
    recipe = tuned.record["fit"]["recipe"]
    n_tokens = n_tokens or recipe["heldout_tokens"]
    texts = corpus.split_texts(model.tokenizer, "heldout", n_tokens, seq_len=recipe["seq_len"], seed=recipe["seed"])
    return Context(name=name, n_tokens=n_tokens, model=model, tuned=tuned, start=start, texts=tuple(texts))


def sections(report: dict) -> list[str]:
    import pandas as pd

    from lenslib.tuned import corpus
    from lenslib.tuned.card import side_by_side

    lines = []
    for e in report["results"]:
        if "table" not in e:
            continue
        means = e["mean_kl_nats_but_last"]
        table = side_by_side(pd.DataFrame.from_records(e["table"]))
        lines += ["", f"## {e['model']}", "",
                  f"{e['heldout_tokens']} held-out tokens ({e['windows']} windows of the held-out split, "
                  f"{corpus.SOURCE}), scored in {e['median_s']:.0f} s.", "", "```",
                  table.to_string(index=False, float_format=lambda x: f"{x:.3f}"), "```", "",
                  "mean KL over all layers but the last (nats): " + ", ".join(f"{k} {v:.3f}" for k, v in means.items())]
    return lines


SUITE = Suite(
    name="tuned-heldout",
    title="Tuned lenses on the whole held-out split (issue 11)",
    about="The logit lens, the least-squares start and the tuned lens scored on the whole held-out "
          "split (full vocabulary), and the issue's targets on that.",
    stem="tuned_heldout",
    tokens_mean="held-out tokens scored (default: the recipe's heldout_tokens)",
    cases=CASES,
    targets=heldout_targets(_table),
    load=load,
    context=context,
    defaults=Defaults(models=("smollm2-135m", "gemma-3-270m")),
    sections=sections,
)
