"""``lenslib recall``: factual recall over the shipped dataset, layer by layer."""

from __future__ import annotations

import json
from pathlib import Path

from lenslib.cli.common import (
    UsageError,
    add_model_argument,
    check_writable,
    load,
    write,
)

NAME = "recall"
HELP = "Evaluate factual recall over the shipped dataset, layer by layer."
EXAMPLES = (
    "  lenslib recall --out recall-gemma\n"
    "  lenslib recall --model smollm2-135m --relation country_capital --limit 20 --out recall-smol"
)


def add_arguments(parser) -> None:
    add_model_argument(parser)
    parser.add_argument("--relation", action="append", help="relation to include (repeatable; default: all)")
    parser.add_argument("--limit", type=int, help="at most N prompts per relation")
    parser.add_argument("--out", type=Path, required=True, help="directory for summary.json, summary.csv, prompts.csv, report.html")


def run(args) -> int:
    from lenslib.recall.analysis import recall_summary, run_recall
    from lenslib.recall.dataset import load_recall_dataset, single_token_flags
    from lenslib.reports.recall import recall_report

    if args.limit is not None and args.limit < 1:
        raise UsageError(f"lenslib recall: --limit must be at least 1, got {args.limit}")
    try:
        items = load_recall_dataset(args.relation)
    except ValueError as error:
        raise UsageError(f"lenslib recall: {error}") from None
    check_writable(args.out / "summary.json")
    model = load(args.model)
    usable = list(items)
    if args.limit:
        kept, seen = [], {}
        for item in usable:
            seen[item.relation] = seen.get(item.relation, 0) + 1
            if seen[item.relation] <= args.limit:
                kept.append(item)
        usable = kept
    several = single_token_flags(usable, model).count(False)
    print(f"{len(usable)} prompts; {several} answers of several tokens for {args.model} are "
          "tracked as their joint probability")
    run = run_recall(model, usable, progress=True)
    summary, by_relation = recall_summary(run)
    write(args.out / "summary.json", json.dumps(summary, indent=1))
    write(args.out / "summary.csv", by_relation.to_csv(index=False))
    write(args.out / "prompts.csv", run.table.to_csv(index=False))
    write(args.out / "report.html", recall_report(run, model_name=args.model))
    print(by_relation.to_string(index=False))
    print(f"\naccuracy at the final layer: {summary['accuracy']:.1%}; wrote {args.out}/")
    return 0
