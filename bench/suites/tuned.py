"""Suite ``tuned``: the tuned lens's fit report and the cost of a lens call with translators (issue 11).

For each bundled model:

1. the tuned lens from the lenslib cache (fitted first if missing; ``--fresh`` fits into an
   empty temporary cache), with the fit's own timings from its record; the seconds it took to
   obtain it in this run are the model's ``set_up_s``;
2. the held-out table from its record: full-vocabulary KL(final || lens) in nats and top-1
   agreement, per layer, for the logit lens, the least-squares start and the tuned lens, and
   the issue's targets on it (``HELDOUT_TARGETS``);
3. the cost of a lens call with translators against the plain lens: ``logit_lens`` on the
   first ``--tokens`` tokens of ``bench/passage.txt``, all positions, cases ``plain`` and
   ``tuned`` interleaved after one warm-up call with translators, median of ``--reps``
   (target: ``tuned/plain`` at most 1.1).

    python -m bench tuned            # writes tuned_results.md and .json into bench/

The same targets on the whole held-out split: suite ``tuned-heldout``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass

from bench.passage import PASSAGE
from bench.suite import Case, Defaults, Ratio, Row, Suite, Target


@dataclass
class Context(Row):
    model: object = None
    lens: object = None
    text: str = ""


# ---------------------------------------------------------------- the targets on a held-out table
# Each takes a table with columns lens, label, kl_nats, top1_agreement (lenses logit,
# least_squares, tuned; one row per lens x layer) and returns (met, figures).


def _columns(frame):
    body = frame[frame.label != "final_post"]
    return lambda name, stat: body[body.lens == name][stat].to_numpy()  # noqa: E731


def tuned_below_logit(frame):
    col = _columns(frame)
    worse = [int(i) for i in (col("tuned", "kl_nats") > col("logit", "kl_nats")).nonzero()[0]]
    return not worse, f"layers where not: {worse}"


def mean_tuned_kl(frame):
    col = _columns(frame)
    kl_logit, kl_ls, kl_tuned = col("logit", "kl_nats"), col("least_squares", "kl_nats"), col("tuned", "kl_nats")
    return kl_tuned.mean() <= 1.7, (f"{kl_tuned.mean():.3f} nats (logit {kl_logit.mean():.3f}, least squares "
                                    f"{kl_ls.mean():.3f})")


def gain_over_least_squares(frame):
    col = _columns(frame)
    gain = 1 - col("tuned", "kl_nats").mean() / col("least_squares", "kl_nats").mean()
    return gain >= 0.15, f"{gain:.1%} below"


def top1_at_least_logit(frame):
    col = _columns(frame)
    fewer = [int(i) for i in (col("tuned", "top1_agreement") < col("logit", "top1_agreement")).nonzero()[0]]
    return not fewer, f"layers where not: {fewer}"


FRAME_TARGETS = (
    ("tuned KL <= logit KL at every layer", tuned_below_logit),
    ("mean tuned KL over layers but the last <= 1.7 nats", mean_tuned_kl),
    ("tuned >= 15% below the least-squares start", gain_over_least_squares),
    ("top-1 agreement tuned >= logit at every layer", top1_at_least_logit),
)


def heldout_targets(frame_of) -> tuple[Target, ...]:
    """The issue's targets, each on the table ``frame_of(ctx, entries)`` returns (None: not applicable)."""
    def check(test):
        def on_row(ctx, entries):
            frame = frame_of(ctx, entries)
            return None if frame is None else test(frame)

        return on_row

    return tuple(Target(text, check(test)) for text, test in FRAME_TARGETS)


def _record_frame(ctx: Context, entries: dict):
    from lenslib.tuned.card import heldout_frame

    return heldout_frame(ctx.lens)


# ---------------------------------------------------------------- the declaration


def call(ctx: Context, lens):
    import lenslib

    return lambda: lenslib.logit_lens(ctx.model, ctx.text, lens=lens)


CASES = (
    Case("plain", "logit_lens, all positions", lambda c: call(c, None)),
    Case("tuned", "logit_lens with the tuned lens's translators, all positions", lambda c: call(c, c.lens)),
)
RATIOS = (Ratio("tuned/plain", ("tuned",), ("plain",), "a lens call with translators against the plain lens",
                at_most=1.1),)


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fresh", action="store_true", help="fit into an empty temporary cache (models too)")


def prepare(args: argparse.Namespace) -> dict:
    if args.fresh:
        os.environ["LENSLIB_CACHE"] = tempfile.mkdtemp(prefix="lenslib-tuned-bench-")
    return {"records": {}, "fit_tables": {}}


def load(name: str, args: argparse.Namespace, report: dict):
    import lenslib
    from lenslib.tuned.card import fit_table

    model = lenslib.load_model(name, device=args.device, dtype=args.torch_dtype)
    lens = lenslib.tuned_lens(model)
    report["records"][name] = lens.record
    report["fit_tables"][name] = fit_table(lens)
    return model, lens


def context(loaded, name: str, n_tokens: int, args: argparse.Namespace, report: dict) -> Context:
    model, lens = loaded
    import lenslib

    ids = model.to_tokens(PASSAGE.read_text(), truncate=False)[0, 1:n_tokens]
    text = model.tokenizer.decode(ids)
    lenslib.logit_lens(model, text, lens=lens)  # warm-up, before either case is timed
    return Context(name=name, n_tokens=n_tokens, model=model, lens=lens, text=text)


def sections(report: dict) -> list[str]:
    lines = []
    for name, table in report.get("fit_tables", {}).items():
        lines += ["", f"## {name}", "", "```", table, "```", "",
                  f"Cache entry obtained in {report['set_up_s'][name]:.1f} s in this run (load + fit if it was missing)."]
    return lines


SUITE = Suite(
    name="tuned",
    title="Tuned-lens fit report and benchmark (issue 11)",
    about="Each bundled model's cached tuned lens: its fit record, the issue's held-out targets, "
          "and a lens call with translators against the plain lens.",
    stem="tuned_results",
    tokens_mean="the lens call's text: the passage's first N - 1 tokens, decoded (the lens adds BOS)",
    cases=CASES,
    ratios=RATIOS,
    targets=heldout_targets(_record_frame),
    load=load,
    context=context,
    defaults=Defaults(models=("smollm2-135m", "gemma-3-270m"), tokens=(128,), reps=5),
    options=options,
    prepare=prepare,
    sections=sections,
    merged=("records", "fit_tables"),
)
