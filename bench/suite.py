"""How a suite is declared: its cases, ratios (with prose and targets), other targets and hooks.

A suite is a module of ``bench/suites/`` that defines ``SUITE = Suite(...)``; :mod:`bench.harness`
runs it. Adding a case or a ratio is one more ``Case(...)`` or ``Ratio(...)`` in that module.

>>> ratio = Ratio("a/b", ("a",), ("b",), "a against b", at_most=1.5)
>>> ratio_values(ratio, {"a": {"median_s": 3.0, "peak_extra_bytes": 10},
...                      "b": {"median_s": 2.0, "peak_extra_bytes": 5}})
{'time': 1.5, 'memory': 2.0}
>>> ratio_values(ratio, {"a": {"median_s": 3.0, "peak_extra_bytes": 10}, "b": {"skipped": "too long"}})
{'time': None, 'memory': None, 'why_none': 'case b skipped'}
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Optional


@dataclass
class Row:
    """One model at one token length: what a suite's ``context`` returns (suites subclass it)."""

    name: str  # the model
    n_tokens: Optional[int]  # what the suite's ``tokens`` counts (Suite.tokens_mean)


def never(ctx: Row) -> Optional[str]:
    """The default ``Case.skip``: run in every row."""
    return None


@dataclass(frozen=True)
class Case:
    """One thing timed in every row.

    ``make(ctx)`` returns the function to time; it runs under ``torch.no_grad()``.
    ``skip(ctx)`` says why the case is not run in a row (or None). ``reps`` overrides ``--reps``
    (1: a measurement too long to repeat). ``keep`` hands the last result to the suite's
    ``after_row``; ``read(ctx, result)`` returns figures read off the last result right after it
    ran (before the next case), added to the case's entry. ``facts(ctx)`` adds what is known
    before the run (an estimate). ``note(entry)`` is the Markdown table's note. ``settle_s``:
    seconds idle after each run (it frees gigabytes; not with ``--tiny``).
    """

    key: str
    label: str
    make: Callable[[Any], Callable[[], object]]
    skip: Callable[[Any], Optional[str]] = never
    colour: Optional[str] = None
    reps: Optional[int] = None
    warm_up: bool = False
    keep: bool = False
    read: Optional[Callable[[Any, object], dict]] = None
    facts: Optional[Callable[[Any], dict]] = None
    note: Optional[Callable[[dict], str]] = None
    settle_s: float = 0.0


@dataclass(frozen=True)
class Ratio:
    """``sum(median time of over) / sum(median time of under)`` in each row.

    The memory ratio is given too where both sides are one case (peaks do not add). ``means``
    is the prose the Markdown gives it. ``at_most`` is a target, checked in every row with at
    least ``from_tokens`` tokens (only where the row's ``ctx.device`` is ``device``, if given).
    ``plot``: drawn in the suite's ratio figure.
    """

    name: str
    over: tuple[str, ...]
    under: tuple[str, ...]
    means: str = ""
    at_most: Optional[float] = None
    from_tokens: int = 0
    device: Optional[str] = None  # the target holds on this device only (None: any)
    plot: bool = False


@dataclass(frozen=True)
class Target:
    """A target on a row's figures: ``check(ctx, entries)`` returns ``(met, figures as text)``,
    or None where the target does not apply to that row (``entries``: case key -> entry)."""

    text: str
    check: Callable[[Any, dict[str, dict]], Optional[tuple[bool, str]]]


@dataclass(frozen=True)
class Defaults:
    """A suite's default models, token lengths (``()``: the suite chooses per row), repetitions
    and torch threads (None: torch's own choice)."""

    models: tuple[str, ...]
    tokens: tuple[int, ...] = ()
    reps: int = 1
    threads: Optional[int] = None


@dataclass(frozen=True)
class Suite:
    """Everything that makes one benchmark: see the module docstring.

    Hooks (all optional but ``load`` and ``context``) take the run's ``args`` and the ``report``
    dict being built, which they may add their own keys to:

    - ``prepare(args)``: once, before anything else; it may derive settings into ``args`` and
      returns the suite's own first keys of the report (e.g. empty lists its rows fill);
    - ``load(name, args, report)``: load one model (its seconds are recorded under ``set_up_s``);
    - ``context(loaded, name, n_tokens, args, report)``: a :class:`Row`, or a string saying why
      that row is skipped;
    - ``entry(ctx)``: fields every entry of the row carries (device, shapes);
    - ``after_row(ctx, entries, kept, report)``: after a row is measured (``kept``: the results
      of the cases with ``keep``);
    - ``preamble(report)`` and ``sections(report)``: Markdown lines before the tables and after
      them (they read the report only, so a report can be rendered again from its JSON);
    - ``figures``: ``(file name, function(report, suite) -> plotly figure, caption)`` triples.
    """

    name: str
    title: str
    about: str
    stem: str
    tokens_mean: str
    cases: tuple[Case, ...]
    load: Callable[[str, argparse.Namespace, dict], Any]
    context: Callable[..., Any]
    defaults: Defaults
    ratios: tuple[Ratio, ...] = ()
    targets: tuple[Target, ...] = ()
    tiny: Optional[Defaults] = None
    devices: tuple[str, ...] = ("cpu",)
    dtypes: tuple[str, ...] = ("fp32",)
    options: Optional[Callable[[argparse.ArgumentParser], None]] = None
    settings: Optional[Callable[[argparse.Namespace], dict]] = None
    prepare: Optional[Callable[[argparse.Namespace], dict]] = None
    entry: Optional[Callable[[Any], dict]] = None
    after_row: Optional[Callable[..., None]] = None
    preamble: Optional[Callable[[dict], list[str]]] = None
    sections: Optional[Callable[[dict], list[str]]] = None
    figures: tuple[tuple[str, Callable, str], ...] = ()
    lengths_outer: bool = False  # every model loaded at once, lengths the outer loop
    row_lists: tuple[str, ...] = ()  # the suite's own per-row lists in the report ("a.b": nested)
    merged: tuple[str, ...] = ()  # the suite's own {model: ...} dicts, kept across --append parts

    def all_targets(self) -> list[Target]:
        """The ratio targets (``Ratio.at_most``) and then the suite's other targets."""
        return [ratio_target(r, r.at_most, r.from_tokens, r.device) for r in self.ratios
                if r.at_most is not None] + list(self.targets)

    def case(self, key: str) -> Case:
        return {c.key: c for c in self.cases}[key]


def ratio_target(ratio: Ratio, at_most: float, from_tokens: int = 0, device: Optional[str] = None) -> Target:
    """A target on ``ratio``'s time: at most ``at_most`` in rows of at least ``from_tokens`` tokens
    (on ``device`` only, if given). ``Ratio.at_most`` makes one; a second bound on the same ratio
    (another device, say) goes in ``Suite.targets`` through this."""
    where = f" at {from_tokens} tokens and above" if from_tokens else ""
    on = f" on {device}" if device else ""

    def check(ctx: Row, entries: dict[str, dict]):
        if (ctx.n_tokens or 0) < from_tokens or (device and getattr(ctx, "device", "cpu") != device):
            return None
        value = ratio_values(ratio, entries)["time"]
        return None if value is None else (value <= at_most, f"{value:.4g}")

    return Target(f"{ratio.name} <= {at_most:g}{where}{on}", check)


def ratio_values(ratio: Ratio, entries: dict[str, dict]) -> dict:
    """``{"time", "memory"}`` of one ratio in one row; None (with ``why_none``) where a case it
    needs was skipped or not run."""
    missing = [c for c in ratio.over + ratio.under if c not in entries or "skipped" in entries[c]]
    if missing:
        why = "skipped" if missing[0] in entries else "not run"
        return {"time": None, "memory": None, "why_none": f"case {missing[0]} {why}"}
    top = sum(entries[c]["median_s"] for c in ratio.over)
    bottom = sum(entries[c]["median_s"] for c in ratio.under)
    memory = None
    if len(ratio.over) == len(ratio.under) == 1 and entries[ratio.under[0]]["peak_extra_bytes"]:
        memory = entries[ratio.over[0]]["peak_extra_bytes"] / entries[ratio.under[0]]["peak_extra_bytes"]
    return {"time": top / bottom if bottom else None, "memory": memory}


def problems(suite: Suite) -> list[str]:
    """What is wrong with a suite's declaration (empty when nothing): duplicate case keys or
    ratio names, ratios over cases it does not declare, repetitions below 1."""
    keys = [c.key for c in suite.cases]
    found = [f"case key {k!r} declared twice" for k in sorted({k for k in keys if keys.count(k) > 1})]
    names = [r.name for r in suite.ratios]
    found += [f"ratio {n!r} declared twice" for n in sorted({n for n in names if names.count(n) > 1})]
    for ratio in suite.ratios:
        unknown = [c for c in ratio.over + ratio.under if c not in keys]
        if unknown or not ratio.over or not ratio.under:
            found.append(f"ratio {ratio.name!r} needs cases {unknown or 'on both sides'}; the suite "
                         f"declares {', '.join(keys)}")
    found += [f"case {c.key!r} has reps={c.reps}" for c in suite.cases if c.reps is not None and c.reps < 1]
    if not suite.cases:
        found.append("no cases")
    return found
