"""The bench as a harness: a suite declares what it measures, this runs it and writes the results.

A suite is a module of ``bench/suites/`` that defines ``SUITE = Suite(...)`` (:mod:`bench.suite`):
how to load a model (``load``), what one row needs (``context``: one model at one token length),
its cases (what is timed), its ratios between cases (with their prose and targets) and any other
targets. Adding a case or a ratio touches that one file; adding a suite adds one file.
``python -m bench SUITE`` runs a suite, ``python -m bench --list`` lists them.

For each row (one model at one token length) the harness builds the suite's context, runs the
chosen cases interleaved over the repetitions, lets the suite add what it reads off the kept
results, computes the ratios and checks the targets, and writes the JSON and Markdown again (a
run cut short keeps every finished row).

Every suite shares the options of :func:`parser` (models, token lengths, repetitions, output
folder, ...), the measurement of :mod:`bench.measure` (wall time and peak memory, cases
interleaved within each repetition) and the writers of :mod:`bench.report` (``STEM.json``,
``STEM.md`` and the suite's figures in ``--out``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from bench import report as writers
from bench.measure import Timed, load_average, machine_info, measure_row, release_memory
from bench.suite import Row, Suite, problems, ratio_values

HERE = Path(__file__).resolve().parent
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ---------------------------------------------------------------- options


def parser(suite: Suite) -> argparse.ArgumentParser:
    """The options every suite takes, then the suite's own (``Suite.options``)."""
    d = suite.defaults
    p = argparse.ArgumentParser(prog=f"python -m bench {suite.name}", description=f"{suite.title}. {suite.about}")
    p.add_argument("--models", help=f"comma-separated (default {','.join(d.models)})")
    p.add_argument("--tokens", help=f"comma-separated: {suite.tokens_mean} (default "
                                    f"{','.join(map(str, d.tokens)) or 'chosen by the suite'})")
    p.add_argument("--reps", type=int, help=f"repetitions of each case; the median is reported (default {d.reps})")
    p.add_argument("--cases", help=f"comma-separated subset of {','.join(c.key for c in suite.cases)} (default: all)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="weight dtype")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--out", default=str(HERE), help="output folder (default: bench/)")
    p.add_argument("--note", default="", help="a line about the machine (e.g. who else used it)")
    p.add_argument("--no-plot", action="store_true", help="skip the figures")
    p.add_argument("--append", action="store_true",
                   help=f"add to the {suite.stem}.json already in --out (a run done in parts: each part's "
                        "machine, settings and load are kept under 'runs'; a model and length measured "
                        "again replaces the earlier one)")
    if suite.tiny is not None:
        t = suite.tiny
        p.add_argument("--tiny", action="store_true",
                       help=f"small settings (models {','.join(t.models)}, tokens {','.join(map(str, t.tokens))}, "
                            f"reps {t.reps}), a few seconds")
    if suite.options is not None:
        suite.options(p)
    return p


def parse_args(suite: Suite, argv: list[str]) -> argparse.Namespace:
    """Parse and check ``argv``; presets resolved, ``args.argv`` kept for the report's command."""
    p = parser(suite)
    args = p.parse_args(argv)
    args.argv = list(argv)
    args.tiny = getattr(args, "tiny", False)
    preset = suite.tiny if args.tiny else suite.defaults
    args.models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else list(preset.models)
    try:
        args.tokens = sorted({int(n) for n in args.tokens.split(",")}) if args.tokens else list(preset.tokens)
    except ValueError:
        p.error(f"--tokens takes comma-separated whole numbers, got {args.tokens!r}")
    args.reps = preset.reps if args.reps is None else args.reps
    args.threads = preset.threads if args.threads is None else args.threads
    keys = [c.key for c in suite.cases]
    chosen = [c.strip() for c in args.cases.split(",") if c.strip()] if args.cases else keys
    unknown = [c for c in chosen if c not in keys]
    if unknown:
        p.error(f"unknown case(s) {unknown}; choose from {', '.join(keys)}")
    args.cases = [k for k in keys if k in chosen]  # the declared order
    if not args.models:
        p.error("--models names no model")
    if args.reps < 1 or (args.tokens and min(args.tokens) < 2) or (args.threads is not None and args.threads < 1):
        p.error("--reps and --threads must be >= 1 and every token count >= 2")
    if args.device not in suite.devices:
        p.error(f"suite {suite.name} runs on {', '.join(suite.devices)} only, not --device {args.device}")
    if args.dtype not in suite.dtypes:
        p.error(f"suite {suite.name} runs in {', '.join(suite.dtypes)} only, not --dtype {args.dtype}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch sees no CUDA device")
    args.torch_dtype = DTYPES[args.dtype]
    return args


# ---------------------------------------------------------------- running


def new_report(suite: Suite, args: argparse.Namespace) -> dict:
    own = suite.prepare(args) if suite.prepare else {}
    report = {
        "suite": suite.name,
        "command": f"python -m bench {suite.name} " + " ".join(shlex.quote(a) for a in args.argv),
        "machine": machine_info(args.device, args.torch_dtype),
        "settings": {
            "models": args.models, "tokens": args.tokens, "reps": args.reps, "cases_run": args.cases,
            "tokens_mean": suite.tokens_mean, "threads": args.threads, "machine_note": args.note,
            **(suite.settings(args) if suite.settings else {}),
        },
        "cases": {c.key: c.label for c in suite.cases if c.key in args.cases},
        "set_up_s": {},
        "results": [],
        "ratios": [],
        "targets": [],
        **own,
    }
    report["runs"] = [{k: report[k] for k in ("command", "machine", "settings", "cases")}]
    return report


def _get(report: dict, path: str) -> list:
    node = report
    for part in path.split("."):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, list) else []


def _put(report: dict, path: str, rows: list) -> None:
    *parents, last = path.split(".")
    node = report
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = rows


def merge_earlier(report: dict, earlier: dict, suite: Suite, args: argparse.Namespace) -> None:
    """``--append``: keep the earlier parts' rows, runs, cases and per-model facts, dropping the
    rows this run measures again (said in this run's ``replaces``)."""
    this_run = report["runs"][0]
    report["runs"] = earlier.get("runs") or [{k: earlier[k] for k in this_run if k in earlier}]
    report["runs"].append(this_run)
    names = set(args.models)
    again = lambda r: r.get("model") in names and (not args.tokens or r.get("tokens") in args.tokens)  # noqa: E731
    replaced = sorted({(r["model"], r["tokens"]) for r in earlier.get("results", []) if again(r)})
    if replaced:
        this_run["replaces"] = [f"{m} at {n} tokens" for m, n in replaced]
    for path in ("results", "ratios", "targets", *suite.row_lists):
        _put(report, path, [r for r in _get(earlier, path) if not again(r)] + _get(report, path))
    report["cases"] = {**earlier.get("cases", {}), **report["cases"]}
    for key in ("set_up_s", *suite.merged):
        report[key] = {**earlier.get(key, {}), **report.get(key, {})}


def measure(suite: Suite, ctx: Row, args: argparse.Namespace) -> tuple[dict[str, dict], dict[str, object]]:
    """One row: every chosen case's entry (measured, or skipped with the reason) and the kept results."""
    entries: dict[str, dict] = {}
    runs: dict[str, Timed] = {}
    for key in args.cases:
        case = suite.case(key)
        entry = {"model": ctx.name, "tokens": ctx.n_tokens, "case": key, "label": case.label,
                 **(suite.entry(ctx) if suite.entry else {}), **(case.facts(ctx) if case.facts else {})}
        why = case.skip(ctx)
        if why:
            entry["skipped"] = why
            print(f"[bench] {ctx.name} {ctx.n_tokens} {key}: skipped, {why}", flush=True)
        else:
            settle = case.settle_s if not args.tiny else 0.0
            runs[key] = Timed(
                fn=case.make(ctx), reps=case.reps or args.reps, warm_up=case.warm_up, keep=case.keep,
                read=(lambda result, case=case: case.read(ctx, result)) if case.read else None,
                after=(lambda s=settle: (release_memory(args.device), time.sleep(s))) if settle else None,
            )
        entries[key] = entry
    measured, kept = measure_row(runs, args.device)
    for key, found in measured.items():
        entries[key].update(found)
        e = entries[key]
        print(f"[bench] {ctx.name} {ctx.n_tokens} {key}: {e['median_s']:.4f} s, "
              f"+{e['peak_extra_bytes'] / 1e6:.1f} MB  ({e['label']})", flush=True)
    return entries, kept


def judge(suite: Suite, ctx: Row, entries: dict[str, dict]) -> tuple[dict, list[dict]]:
    """The row's ratios and the targets that apply to it."""
    ratios = {"model": ctx.name, "tokens": ctx.n_tokens}
    ratios.update({r.name: ratio_values(r, entries) for r in suite.ratios})
    targets = []
    for target in suite.all_targets():
        found = target.check(ctx, entries)
        if found is not None:
            met, figures = found
            targets.append({"model": ctx.name, "tokens": ctx.n_tokens, "target": target.text,
                            "met": bool(met), "figures": figures})
            print(f"[bench] {ctx.name} {ctx.n_tokens} target {target.text}: "
                  f"{'met' if met else 'NOT met'} ({figures})", flush=True)
    return ratios, targets


def rows(suite: Suite, args: argparse.Namespace, report: dict):
    """``(loaded, model name, tokens)`` in the suite's order; models loaded as needed."""
    lengths = args.tokens or [None]

    def load(name):
        print(f"[bench] loading {name} on {args.device} ({args.dtype})", flush=True)
        started = time.perf_counter()
        loaded = suite.load(name, args, report)
        report["set_up_s"][name] = time.perf_counter() - started
        return loaded

    if suite.lengths_outer:  # a run cut short still has every model at the shorter lengths
        loaded = {name: load(name) for name in args.models}
        for n in lengths:
            for name in args.models:
                yield loaded[name], name, n
    else:  # one model in memory at a time
        for name in args.models:
            loaded = load(name)
            for n in lengths:
                yield loaded, name, n
            del loaded
            release_memory(args.device)


def run(suite: Suite, args: argparse.Namespace) -> dict:
    """Measure every row, writing the JSON and Markdown after each (a run cut short keeps them)."""
    out = Path(args.out)
    report = new_report(suite, args)
    previous = out / f"{suite.stem}.json"
    if args.append and previous.exists():
        merge_earlier(report, json.loads(previous.read_text(encoding="utf-8")), suite, args)
    for loaded, name, n in rows(suite, args, report):
        ctx = suite.context(loaded, name, n, args, report)
        if isinstance(ctx, str):
            print(f"[bench] {name} {n}: row skipped, {ctx}", flush=True)
            continue
        entries, kept = measure(suite, ctx, args)
        if suite.after_row:
            suite.after_row(ctx, entries, kept, report)
        del kept
        ratios, targets = judge(suite, ctx, entries)
        report["results"] += entries.values()
        if suite.ratios:
            report["ratios"].append(ratios)
        report["targets"] += targets
        writers.write(report, suite, out)
    release_memory(args.device)
    return report


def run_suite(suite: Suite, argv: Optional[list[str]] = None) -> dict:
    """Parse ``argv``, run ``suite``, write ``STEM.json``, ``STEM.md`` and its figures; the report."""
    wrong = problems(suite)
    if wrong:
        raise ValueError(f"suite {suite.name!r} is declared wrongly: " + "; ".join(wrong))
    args = parse_args(suite, list(sys.argv[1:] if argv is None else argv))
    started = time.perf_counter()
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = run(suite, args)
    finally:
        torch.set_num_threads(threads)
    out = Path(args.out)
    report["load_average_at_end"] = load_average()
    if suite.figures and not args.no_plot and report["results"]:
        report["plot"] = writers.write_figures(report, suite, out)
    report["total_seconds"] = time.perf_counter() - started
    paths = writers.write(report, suite, out)
    print(f"[bench] wrote {', '.join(str(p) for p in paths)} in {report['total_seconds']:.0f} s", flush=True)
    return report
