"""What every ``lenslib`` subcommand shares: loading, errors in one line, safe writes."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

from lenslib.core.files import write_text_atomic

DEFAULT_MODEL = "gemma-3-270m"


class UsageError(Exception):
    """Bad input from the command line: reported in one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, with no usage dump."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default: {DEFAULT_MODEL})")


def add_output_arguments(parser: argparse.ArgumentParser, table: str) -> None:
    """``--html``, ``--json`` and ``--csv``: the same three outputs for every result."""
    parser.add_argument("--html", type=Path, help="write a standalone HTML report (opens offline)")
    parser.add_argument("--json", type=Path, help="write the result as JSON")
    parser.add_argument("--csv", type=Path, help=f"write the tidy table ({table})")


def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line on stderr (no source path, no code line)."""
    print(f"lenslib: warning: {' '.join(str(message).split())}", file=sys.stderr)


def load(name: str):
    """Load a model, or a :class:`UsageError` that says why not."""
    from lenslib.errors import LenslibError
    from lenslib.models.loading import load_model

    try:
        return load_model(name)
    except (LenslibError, ValueError) as error:
        raise UsageError(f"lenslib: cannot load model {name!r}: {str(error).splitlines()[0]}") from None


def tuned(model):
    """The cached tuned lens of a loaded bundled model (fitted on first use)."""
    from lenslib.errors import LenslibError
    from lenslib.tuned.cache import tuned_lens

    try:
        return tuned_lens(model)
    except (LenslibError, ValueError) as error:
        raise UsageError(f"lenslib: no tuned lens for this model: {str(error).splitlines()[0]}") from None


def lens_call(run: Callable):
    """Run a library call; its input errors become one-line usage errors."""
    try:
        return run()
    except (ValueError, IndexError) as error:
        raise UsageError(f"lenslib: {error}") from None


def check_prompt(prompt: str) -> None:
    if not prompt.strip():
        raise UsageError("lenslib: the prompt is empty; give the text to lens, e.g. \"The capital of France is\"")


def check_writable(*paths: Optional[Path]) -> None:
    """Fail before any work when an output could not be written: really try, in its directory."""
    for path in paths:
        if path is None:
            continue
        if path.is_dir():
            raise UsageError(f"lenslib: {path} is a directory; give a file name")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path.parent):
                pass
        except OSError as error:
            raise UsageError(f"lenslib: cannot write {path}: {error.strerror or error}") from None


def write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename: never a half-written file."""
    write_text_atomic(path, text)


def write_outputs(args, result, html_page: Callable[[], str]) -> None:
    """Write whichever of ``--json``, ``--csv`` and ``--html`` were asked for, and say so."""
    import json

    if args.json:
        write(args.json, json.dumps(result.to_dict(), indent=1))
    if args.csv:
        write(args.csv, result.to_frame().to_csv(index=False))
    if args.html:
        write(args.html, html_page())
    for path in (args.html, args.json, args.csv):
        if path:
            print(f"wrote {path}")
