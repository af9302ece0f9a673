"""``lenslib lens``: one prompt, per layer, the top-k tokens at the last position."""

from __future__ import annotations

import json
from pathlib import Path

from lenslib.cli.common import (
    add_model_argument,
    check_prompt,
    check_writable,
    lens_call,
    load,
    tuned,
    write,
)

NAME = "lens"
HELP = "Lens one prompt and print, per layer, the top-k tokens at the last position."
EXAMPLES = (
    '  lenslib lens "The Eiffel Tower is located in the city of" --target " Paris"\n'
    '  lenslib lens "It was the best of times" --model smollm2-135m --positions all --html lens.html\n'
    '  lenslib lens "Hello" --json out.json --csv out.csv\n'
    '  lenslib lens "The Eiffel Tower is located in the city of" --lens tuned'
)


def add_arguments(parser) -> None:
    parser.add_argument("prompt", help="the text to run (a BOS token is prepended)")
    add_model_argument(parser)
    parser.add_argument("--target", help="a token to track, e.g. ' Paris' (default: the next input token)")
    parser.add_argument("--k", type=int, default=5, help="top tokens per layer (default: 5)")
    parser.add_argument("--positions", choices=["last", "all"], default="last", help="positions to compute (default: last)")
    parser.add_argument("--html", type=Path, help="write a standalone HTML report (opens offline)")
    parser.add_argument("--json", type=Path, help="write the LensResult data as JSON")
    parser.add_argument("--csv", type=Path, help="write the tidy table (one row per layer x position x rank)")
    parser.add_argument("--lens", choices=["logit", "tuned"], default="logit",
                        help="logit lens, or the tuned lens fitted for the model (cached; fitted on first use)")


def run(args) -> int:
    from lenslib.core.tokens import is_multi_token
    from lenslib.lens.logit_lens import logit_lens
    from lenslib.reports.lens import lens_report

    check_prompt(args.prompt)
    check_writable(args.html, args.json, args.csv)
    model = load(args.model)
    lens = tuned(model) if args.lens == "tuned" else None
    result = lens_call(lambda: logit_lens(
        model, args.prompt, k=args.k, target=args.target, positions=args.positions, lens=lens))
    print(result)
    if args.json:
        write(args.json, json.dumps(result.to_dict(), indent=1))
    if args.csv:
        write(args.csv, result.to_frame().to_csv(index=False))
    if args.html:
        joint = is_multi_token(model, args.target)  # a joint answer has the last position only
        full = result if args.positions == "all" or joint else lens_call(
            lambda: logit_lens(model, args.prompt, k=args.k, target=args.target, lens=lens))
        write(args.html, lens_report(full, model_name=args.model, prompt=args.prompt))
    for path in (args.html, args.json, args.csv):
        if path:
            print(f"wrote {path}")
    return 0
