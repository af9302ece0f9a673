"""``lenslib compare``: several models on one prompt, along relative depth."""

from __future__ import annotations

from pathlib import Path

from lenslib.cli.common import (
    UsageError,
    check_prompt,
    check_writable,
    lens_call,
    load,
    write,
)

NAME = "compare"
HELP = "Compare models on one prompt along relative depth."
EXAMPLES = (
    '  lenslib compare "The capital of Italy is the city of" --models gemma-3-270m,smollm2-135m '
    '--target " Rome" --html compare.html'
)


def add_arguments(parser) -> None:
    parser.add_argument("prompt")
    parser.add_argument("--models", default="gemma-3-270m,smollm2-135m", help="comma-separated names")
    parser.add_argument("--target", help="token to track (default: each model's own final top-1)")
    parser.add_argument("--html", type=Path, required=True, help="the report to write")


def run(args) -> int:
    from lenslib.lens.compare import compare
    from lenslib.reports.lens import compare_report

    check_prompt(args.prompt)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if len(names) < 2:
        raise UsageError("lenslib compare: --models needs at least two names, e.g. gemma-3-270m,smollm2-135m")
    check_writable(args.html)
    models = [(name, load(name)) for name in names]
    labels = [name if names.count(name) == 1 else f"{name} ({i + 1})" for i, name in enumerate(names)]
    comparison = lens_call(lambda: compare(dict(zip(labels, (m for _, m in models))), args.prompt, target=args.target))
    for name, r in comparison.results.items():
        print(f"{name}: final top-1 {r.top_tokens[-1][0][0]!r}, "
              f"target {r.target_tokens[0]!r} rank {int(r.target_rank[-1, 0])}")
    write(args.html, compare_report(comparison.results, prompt=args.prompt))
    print(f"wrote {args.html}")
    return 0
