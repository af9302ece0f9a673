"""``lenslib tune``: fit (or load from the cache) a model's tuned lens and print its scores."""

from __future__ import annotations

from pathlib import Path

from lenslib.cli.common import add_model_argument, check_writable, load, tuned, write

NAME = "tune"
HELP = "Fit (or load from the cache) the tuned lens of a model; print its held-out scores."
EXAMPLES = "  lenslib tune --model smollm2-135m --html tune-smollm2.html"


def add_arguments(parser) -> None:
    add_model_argument(parser)
    parser.add_argument("--html", type=Path, help="write the fit report (held-out KL and top-1 agreement per layer)")


def run(args) -> int:
    from lenslib.reports.tuned import tune_report
    from lenslib.tuned.card import fit_table

    check_writable(args.html)
    model = load(args.model)
    lens = tuned(model)
    print(fit_table(lens))
    if args.html:
        write(args.html, tune_report(lens))
        print(f"wrote {args.html}")
    return 0
