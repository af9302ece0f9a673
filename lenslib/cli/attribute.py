"""``lenslib attribute``: direct logit attribution of one logit at the last position."""

from __future__ import annotations

from lenslib.cli.common import (
    UsageError,
    add_model_argument,
    add_output_arguments,
    check_prompt,
    check_writable,
    lens_call,
    load,
    write_outputs,
)

NAME = "attribute"
HELP = "Direct logit attribution: what each block writes into one logit at the last position."
EXAMPLES = (
    '  lenslib attribute "The Eiffel Tower is located in the city of" --target " Paris"\n'
    '  lenslib attribute "The Eiffel Tower is located in the city of" --target " Paris" --versus " Rome" '
    "--model smollm2-135m --per-head --html dla.html"
)


def add_arguments(parser) -> None:
    parser.add_argument("prompt", help="the text to run (a BOS token is prepended)")
    parser.add_argument("--target", required=True, help="the token whose logit to attribute, e.g. ' Paris'")
    parser.add_argument("--versus", help="attribute logit(target) - logit(versus) instead")
    parser.add_argument("--per-head", action="store_true", help="split attention into heads (Llama/SmolLM2 only)")
    parser.add_argument("--top", type=int, default=10, help="components to print (default: 10)")
    add_model_argument(parser)
    add_output_arguments(parser, "one row per component")


def run(args) -> int:
    from lenslib.causal.attribution import LINEARISATION, attribute
    from lenslib.reports.attribution import attribution_report

    check_prompt(args.prompt)
    if args.top < 1:
        raise UsageError(f"lenslib attribute: --top must be at least 1, got {args.top}")
    check_writable(args.html, args.json, args.csv)
    model = load(args.model)
    result = lens_call(lambda: attribute(model, args.prompt, target=args.target, versus=args.versus,
                                          per_head=args.per_head))
    what = repr(result.target_token) + (f" - {result.versus_token!r}" if result.versus_token else "")
    print(f"direct logit attribution of {what} at the last position ({LINEARISATION})")
    print(f"total {result.total:.4f} = components {float(result.contributions.sum()):.4f} "
          f"+ constant {result.constant:.4f} (residual {result.residual:.1e})")
    for label, value in result.top(args.top):
        print(f"  {label:<14} {value:+9.4f}")
    write_outputs(args, result, lambda: attribution_report(result, model_name=args.model, prompt=args.prompt))
    return 0
