"""``lenslib patch``: patch the clean residual stream into the corrupt run, layer x position."""

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

NAME = "patch"
HELP = "Patch the clean residual stream into the corrupt run, layer x position."
EXAMPLES = (
    '  lenslib patch "The Eiffel Tower is located in the city of" '
    '"The Colosseum is located in the city of" --target " Paris" --versus " Rome" --html patch.html'
)


def add_arguments(parser) -> None:
    parser.add_argument("clean", help="the prompt whose answer is --target")
    parser.add_argument("corrupt", help="a prompt of the same token length that changes the answer")
    parser.add_argument("--target", "--answer", dest="target", required=True,
                        help="the clean answer token, e.g. ' Paris' (--answer is the same option)")
    parser.add_argument("--versus", help="compare with this token (metric: logit difference)")
    parser.add_argument("--metric", choices=["prob", "logit", "logit_diff"], help="default: prob, or logit_diff with --versus")
    parser.add_argument("--batch-size", type=int, default=32, help="patched runs per forward pass (default: 32)")
    add_model_argument(parser)
    add_output_arguments(parser, "one row per layer x position")


def run(args) -> int:
    from lenslib.causal.patching import patch_layers
    from lenslib.reports.attribution import patching_report

    check_prompt(args.clean)
    check_prompt(args.corrupt)
    if args.batch_size < 1:
        raise UsageError(f"lenslib patch: --batch-size must be at least 1, got {args.batch_size}")
    check_writable(args.html, args.json, args.csv)
    model = load(args.model)
    result = lens_call(lambda: patch_layers(model, args.clean, args.corrupt, target=args.target, versus=args.versus,
                                             metric=args.metric, batch_size=args.batch_size))
    layer, pos, best = result.best()
    print(f"{result.metric_name}: clean {result.clean_value:.4g}, corrupt {result.corrupt_value:.4g}")
    print(f"best patch: layer {layer}, position {pos} ({result.clean_tokens[pos]!r}) restores {best:.1%}")
    print("restored fraction per layer at the best position:")
    column = result.positions.tolist().index(pos)
    for i, label in enumerate(result.layer_labels):
        print(f"  {label:<11} {float(result.restored[i, column]):+.3f}")
    write_outputs(args, result, lambda: patching_report(result, model_name=args.model, clean=args.clean,
                                                         corrupt=args.corrupt))
    return 0
