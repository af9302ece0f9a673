"""``lenslib patch``: patch the residual stream, attention or MLP outputs, or single heads, from
one prompt into the other, component x position."""

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
HELP = "Patch the residual stream, attention or MLP outputs, or heads, from one prompt into the other."
EXAMPLES = (
    '  lenslib patch "The Eiffel Tower is located in the city of" '
    '"The Colosseum is located in the city of" --target " Paris" --versus " Rome" --html patch.html\n'
    '  lenslib patch "The Eiffel Tower is located in the city of" '
    '"The Colosseum is located in the city of" --target " Paris" --site attn --direction noising\n'
    '  lenslib patch "The Eiffel Tower is located in the city of" '
    '"The Colosseum is located in the city of" --target " Paris" --site head --model smollm2-135m'
)
SITES = ("resid", "attn", "mlp", "head")


def add_arguments(parser) -> None:
    parser.add_argument("clean", help="the prompt whose answer is --target")
    parser.add_argument("corrupt", help="a prompt of the same token length that changes the answer")
    parser.add_argument("--target", "--answer", dest="target", required=True,
                        help="the clean answer token, e.g. ' Paris' (--answer is the same option)")
    parser.add_argument("--versus", help="compare with this token (metric: logit difference)")
    parser.add_argument("--metric", choices=["prob", "logit", "logit_diff"], help="default: prob, or logit_diff with --versus")
    parser.add_argument("--site", choices=SITES, default="resid",
                        help="what to patch: the residual stream entering each block (default), each block's "
                             "attention output, its MLP output, or each single head (hook_z; not on Gemma)")
    parser.add_argument("--direction", choices=["denoising", "noising"], default="denoising",
                        help="denoising: clean activations into the corrupt run (default); noising: corrupt "
                             "activations into the clean run")
    parser.add_argument("--positions", default=None,
                        help="'all', 'last' or comma-separated positions (default: all; the last for --site head)")
    parser.add_argument("--batch-size", type=int, default=32, help="patched runs per forward pass (default: 32)")
    add_model_argument(parser)
    add_output_arguments(parser, "one row per patched component x position")


def run(args) -> int:
    from lenslib.causal.components import patch_components
    from lenslib.reports.attribution import patching_report

    check_prompt(args.clean)
    check_prompt(args.corrupt)
    if args.batch_size < 1:
        raise UsageError(f"lenslib patch: --batch-size must be at least 1, got {args.batch_size}")
    positions = _positions(args.positions)
    check_writable(args.html, args.json, args.csv)
    model = load(args.model)
    result = lens_call(lambda: patch_components(
        model, args.clean, args.corrupt, target=args.target, versus=args.versus, metric=args.metric,
        site=args.site, direction=args.direction, positions=positions, batch_size=args.batch_size))
    label, pos, best = result.best()
    verb = "restores" if result.direction == "denoising" else "removes"
    print(f"{result.metric_name}: clean {result.clean_value:.4g}, corrupt {result.corrupt_value:.4g} "
          f"({args.site}, {args.direction})")
    print(f"best patch: {label}, position {pos} ({result.clean_tokens[pos]!r}) {verb} {best:.1%}")
    column = result.positions.tolist().index(pos)
    effect = result.effect[:, column]
    rows = range(len(result.layer_labels))
    heading = "effect per row at the best position"
    if len(result.layer_labels) > 40:
        rows = sorted(rows, key=lambda i: -abs(float(effect[i])))[:20]
        heading += " (the 20 largest)"
    print(heading + ":")
    for i in rows:
        print(f"  {result.layer_labels[i]:<14} {float(effect[i]):+.3f}")
    write_outputs(args, result, lambda: patching_report(result, model_name=args.model, clean=args.clean,
                                                         corrupt=args.corrupt))
    return 0


def _positions(text):
    """``--positions`` as patch_components takes it: None, "all", "last" or a list of ints."""
    if text is None or text.strip() in ("all", "last"):
        return None if text is None else text.strip()
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UsageError(f"lenslib patch: --positions takes 'all', 'last' or comma-separated integers, got {text!r}") from None
