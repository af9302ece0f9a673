"""``lenslib attribute`` and ``lenslib patch``: their arguments and handlers (see lenslib.cli)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EXAMPLES = {
    "attribute": (
        '  lenslib attribute "The Eiffel Tower is located in the city of" --target " Paris"\n'
        '  lenslib attribute "The Eiffel Tower is located in the city of" --target " Paris" --versus " Rome" '
        "--model smollm2-135m --per-head --html dla.html"
    ),
    "patch": (
        '  lenslib patch "The Eiffel Tower is located in the city of" '
        '"The Colosseum is located in the city of" --answer " Paris" --versus " Rome" --html patch.html'
    ),
}


def add_arguments(command, default_model: str) -> None:
    """Register the two subcommands through ``command(name, help)`` from :mod:`lenslib.cli`."""
    attribute = command("attribute", "Direct logit attribution: what each block writes into one logit at the last position.")
    attribute.add_argument("prompt", help="the text to run (a BOS token is prepended)")
    attribute.add_argument("--target", required=True, help="the token whose logit to attribute, e.g. ' Paris'")
    attribute.add_argument("--versus", help="attribute logit(target) - logit(versus) instead")
    attribute.add_argument("--per-head", action="store_true", help="split attention into heads (Llama/SmolLM2 only)")
    attribute.add_argument("--top", type=int, default=10, help="components to print (default: 10)")
    _common(attribute, default_model)

    patch = command("patch", "Patch the clean residual stream into the corrupt run, layer x position.")
    patch.add_argument("clean", help="the prompt whose answer is --answer")
    patch.add_argument("corrupt", help="a prompt of the same token length that changes the answer")
    patch.add_argument("--answer", required=True, help="the clean answer token, e.g. ' Paris'")
    patch.add_argument("--versus", help="compare with this token (metric: logit difference)")
    patch.add_argument("--metric", choices=["prob", "logit", "logit_diff"], help="default: prob, or logit_diff with --versus")
    patch.add_argument("--batch-size", type=int, default=32, help="patched runs per forward pass (default: 32)")
    _common(patch, default_model)


def _common(parser: argparse.ArgumentParser, default_model: str) -> None:
    parser.add_argument("--model", default=default_model, help=f"model name (default: {default_model})")
    parser.add_argument("--html", type=Path, help="write a standalone HTML report (opens offline)")
    parser.add_argument("--json", type=Path, help="write the result as JSON")
    parser.add_argument("--csv", type=Path, help="write the table (one row per component / layer x position)")


def run_attribute(args) -> int:
    from lenslib.attribution import LINEARISATION, attribute
    from lenslib.cli import UsageError, _check_prompt, _lens_call, _load

    _check_prompt(args.prompt)
    if args.top < 1:
        raise UsageError(f"lenslib attribute: --top must be at least 1, got {args.top}")
    _check_outputs(args)
    model = _load(args.model)
    result = _lens_call(lambda: attribute(model, args.prompt, target=args.target, versus=args.versus,
                                          per_head=args.per_head))
    what = repr(result.target_token) + (f" - {result.versus_token!r}" if result.versus_token else "")
    print(f"direct logit attribution of {what} at the last position ({LINEARISATION})")
    print(f"total {result.total:.4f} = components {float(result.contributions.sum()):.4f} "
          f"+ constant {result.constant:.4f} (residual {result.residual:.1e})")
    for label, value in result.top(args.top):
        print(f"  {label:<14} {value:+9.4f}")
    from lenslib.attribution_report import attribution_report

    _write_outputs(args, result, lambda: attribution_report(result, model_name=args.model, prompt=args.prompt))
    return 0


def run_patch(args) -> int:
    from lenslib.cli import UsageError, _check_prompt, _lens_call, _load
    from lenslib.patching import patch_layers

    _check_prompt(args.clean)
    _check_prompt(args.corrupt)
    if args.batch_size < 1:
        raise UsageError(f"lenslib patch: --batch-size must be at least 1, got {args.batch_size}")
    _check_outputs(args)
    model = _load(args.model)
    result = _lens_call(lambda: patch_layers(model, args.clean, args.corrupt, args.answer, versus=args.versus,
                                             metric=args.metric, batch_size=args.batch_size))
    layer, pos, best = result.best()
    print(f"{result.metric_name}: clean {result.clean_value:.4g}, corrupt {result.corrupt_value:.4g}")
    print(f"best patch: layer {layer}, position {pos} ({result.clean_tokens[pos]!r}) restores {best:.1%}")
    print("restored fraction per layer at the best position:")
    column = result.positions.tolist().index(pos)
    for i, label in enumerate(result.layer_labels):
        print(f"  {label:<11} {float(result.restored[i, column]):+.3f}")
    from lenslib.attribution_report import patching_report

    _write_outputs(args, result, lambda: patching_report(result, model_name=args.model, clean=args.clean,
                                                         corrupt=args.corrupt))
    return 0


def _check_outputs(args) -> None:
    from lenslib.cli import _check_writable

    for path in (args.html, args.json, args.csv):
        _check_writable(path)


def _write_outputs(args, result, html_page) -> None:
    from lenslib.cli import _write_atomic

    if args.json:
        _write_atomic(args.json, json.dumps(result.to_dict(), indent=1))
    if args.csv:
        _write_atomic(args.csv, result.to_frame().to_csv(index=False))
    if args.html:
        _write_atomic(args.html, html_page())
    for path in (args.html, args.json, args.csv):
        if path:
            print(f"wrote {path}")
