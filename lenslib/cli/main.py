"""The ``lenslib`` command: lens a prompt, evaluate recall, compare models, attribute, patch, tune.

Each subcommand is one module of this package (``NAME``, ``HELP``, ``EXAMPLES``,
``add_arguments(parser)``, ``run(args)``), built on the same public functions as the notebooks.
Exit status: 0 on success, 2 on a usage error (one line on stderr, no traceback), 1 on any
other failure.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Optional

from lenslib.cli import attribute, compare, lens, models, patch, recall, tune
from lenslib.cli.common import Parser, UsageError, one_line_warning

SUBCOMMANDS = [models, lens, recall, attribute, patch, tune, compare]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="lenslib",
        description="The logit lens on TransformerLens: what does a model predict at each layer?",
        epilog="examples:\n" + "\n".join(sub.EXAMPLES for sub in SUBCOMMANDS),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    for sub in SUBCOMMANDS:
        sub.add_arguments(commands.add_parser(
            sub.NAME, help=sub.HELP, description=sub.HELP, epilog="examples:\n" + sub.EXAMPLES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        ))
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    handlers = {sub.NAME: sub.run for sub in SUBCOMMANDS}
    try:
        args = parser.parse_args(argv)
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warning
            return handlers[args.command](args)
    except UsageError as error:
        print(error, file=sys.stderr)
        return 2
    except OSError as error:  # e.g. the disk filled while writing: nothing half-written is left
        print(f"lenslib: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lenslib: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
