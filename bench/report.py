"""What the bench writes for a suite: ``STEM.json`` (everything measured), ``STEM.md`` (the tables,
the ratios with their prose, the targets met or not) and the suite's figures (PNG, or HTML where
no PNG can be rendered)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from lenslib.core.files import write_text_atomic

if TYPE_CHECKING:
    from bench.suite import Suite


def _plain(value):
    """JSON for what ``json`` does not know: numpy scalars and arrays, tensors, paths."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def write(report: dict, suite: "Suite", out: Path) -> list[Path]:
    """``STEM.json`` and ``STEM.md`` in ``out`` (each written whole or not at all)."""
    out = Path(out)
    paths = [out / f"{suite.stem}.json", out / f"{suite.stem}.md"]
    write_text_atomic(paths[0], json.dumps(report, indent=2, default=_plain) + "\n")
    write_text_atomic(paths[1], markdown(report, suite))
    return paths


def fmt(x: Optional[float], digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}g}"


def machine_lines(report: dict) -> list[str]:
    """Where and how it was measured: machine, versions, load, repetitions, memory method."""
    m, s = report["machine"], report["settings"]
    parts = len(report.get("runs", []))
    last = "The last of several parts (each part below): " if parts > 1 else ""
    return [
        f"{last}{m['device']} ({m['dtype']}): {m['cpu_model']}, {m['cpu_cores']} cores, "
        f"{m['torch_threads']} torch threads, {m['ram_gb']} GB RAM"
        + (f", {m['gpu']}" if "gpu" in m else "")
        + f"; torch {m['torch']}, transformers {m.get('transformers', '?')}, transformer-lens "
        f"{m['transformer_lens']}. Load average (1, 5, 15 min) at start: "
        f"{m.get('load_average_at_start')}, at the end: {report.get('load_average_at_end')}"
        f"{'; ' + s['machine_note'] if s.get('machine_note') else ''}.",
        (f"Median of {s['reps']} repetition(s){' in that part' if parts > 1 else ''} (cases measured "
         "once say so), the cases interleaved within each repetition. " if s["reps"] > 1 else
         "Each case measured once. ")
        +
        f"Tokens: {s.get('tokens_mean', 'tokens run, BOS included')}. Memory: {m['memory_method']}.",
    ]


def case_table(report: dict, suite: "Suite") -> list[str]:
    notes = {c.key: c.note for c in suite.cases if c.note}
    lines = [
        "| model | tokens | case | median s | min s | peak extra MB | load 1m | note |",
        "|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        if "skipped" in r:
            est = r.get("estimated_peak_extra_bytes")
            lines.append(
                f"| {r['model']} | {r['tokens']} | {r['case']} {r['label']} | — | — | "
                f"{f'(est. {est / 1e6:.0f})' if est else '—'} | — | skipped: {r['skipped']} |"
            )
            continue
        note = notes[r["case"]](r) if r["case"] in notes else ""
        if len(r["times_s"]) == 1 and report["settings"]["reps"] > 1:
            note = "; ".join(x for x in ("measured once", note) if x)
        loads = [x for x in r.get("load_average_1m_each", []) if x is not None]
        lines.append(
            f"| {r['model']} | {r['tokens']} | {r['case']} {r['label']} | {r['median_s']:.4g} | "
            f"{r['min_s']:.4g} | {r['peak_extra_bytes'] / 1e6:.1f} | "
            f"{fmt(max(loads) if loads else None)} | {note} |"
        )
    return lines


def ratio_table(report: dict, suite: "Suite") -> list[str]:
    if not suite.ratios or not report.get("ratios"):
        return []
    names = [r.name for r in suite.ratios]
    prose = "; ".join(f"{r.name}: {r.means}" for r in suite.ratios if r.means)
    lines = [
        "",
        "Ratios of median times (memory ratios in the JSON); — where a case was skipped or not run. "
        + (prose + "." if prose else ""),
        "",
        "| model | tokens | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for row in report["ratios"]:
        cells = [fmt(row.get(name, {}).get("time")) for name in names]
        lines.append(f"| {row['model']} | {row['tokens']} | " + " | ".join(cells) + " |")
    return lines


def target_table(report: dict) -> list[str]:
    if not report.get("targets"):
        return []
    missed = [t for t in report["targets"] if not t["met"]]
    lines = ["", f"Targets: {len(report['targets']) - len(missed)} of {len(report['targets'])} met"
             + (" (misses in bold)." if missed else "."), "",
             "| model | tokens | target | met | figures |", "|---|---:|---|---|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['model']} | {t['tokens']} | {t['target']} | "
                     f"{'yes' if t['met'] else '**NOT met**'} | {t['figures']} |")
    return lines


def parts_lines(report: dict) -> list[str]:
    if len(report.get("runs", [])) <= 1:
        return []
    lines = ["", f"Done in {len(report['runs'])} parts (one process each; every model and length lies "
             "within one part, so each ratio compares cases from one process):"]
    for part in report["runs"]:
        pm, ps = part["machine"], part["settings"]
        lines.append(f"- `{part['command']}`: {ps['models']} at {ps['tokens']} tokens, cases "
                     f"{', '.join(ps.get('cases_run', []))}, {ps.get('reps', '?')} repetition(s), "
                     f"{pm['torch_threads']} torch thread(s), "
                     f"load average at start {pm.get('load_average_at_start')}"
                     + (f"; replaces the earlier {', '.join(part['replaces'])}" if part.get("replaces") else "")
                     + (f"; {part['note']}" if part.get("note") else "") + ".")
    return lines


def markdown(report: dict, suite: "Suite") -> str:
    """The whole ``STEM.md``, from the report alone (and the suite's declarations)."""
    lines = [f"# {suite.title}", "", *machine_lines(report)]
    lines += suite.preamble(report) if suite.preamble else []
    lines += ["", "Cases: " + "; ".join(f"**{k}** {v}" for k, v in report["cases"].items()) + ".", ""]
    lines += case_table(report, suite) + ratio_table(report, suite) + target_table(report)
    lines += suite.sections(report) if suite.sections else []
    if report.get("plot"):
        lines += ["", f"Figures: {report['plot']['message']}"]
    lines += parts_lines(report)
    if report.get("total_seconds"):
        lines += ["", f"Last part: {report['total_seconds']:.0f} s, command `{report.get('command', '')}`."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- figures


def time_figure(report: dict, suite: "Suite"):
    """Median time against tokens, one panel per model, one line per case (log-log)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    models = list(dict.fromkeys(r["model"] for r in report["results"]))
    fig = make_subplots(rows=1, cols=len(models), subplot_titles=models)
    run = set(r["case"] for r in report["results"])
    for col, name in enumerate(models, start=1):
        for case in [c for c in suite.cases if c.key in run]:
            done = [r for r in report["results"] if r["model"] == name and r["case"] == case.key and "skipped" not in r]
            fig.add_trace(
                go.Scatter(
                    x=[r["tokens"] for r in done], y=[r["median_s"] for r in done],
                    mode="lines+markers", name=f"{case.key}: {case.label}", legendgroup=case.key,
                    showlegend=col == 1, line={"color": case.colour},
                ),
                row=1, col=col,
            )
        ticks = sorted({r["tokens"] for r in report["results"] if r["model"] == name})
        fig.update_xaxes(type="log", title_text=f"tokens ({suite.tokens_mean})", tickvals=ticks, row=1, col=col)
        fig.update_yaxes(type="log", title_text="wall time, s (median)" if col == 1 else None, row=1, col=col)
    m = report["machine"]
    fig.update_layout(
        title=f"{suite.title}: time vs tokens ({m['device']}, {m['dtype']}, {m['cpu_cores']} cores)",
        width=520 * len(models) + 360, height=500, template="plotly_white",
    )
    return fig


def ratio_figure(report: dict, suite: "Suite"):
    """The ratios declared with ``plot=True`` against tokens, one panel per model (log x)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = [r.name for r in suite.ratios if r.plot]
    models = list(dict.fromkeys(r["model"] for r in report["ratios"]))
    fig = make_subplots(rows=1, cols=len(models), subplot_titles=models)
    palette = ["#e377c2", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"]
    for col, model in enumerate(models, start=1):
        rows = sorted((r for r in report["ratios"] if r["model"] == model), key=lambda r: r["tokens"])
        for i, name in enumerate(names):
            done = [r for r in rows if r.get(name, {}).get("time") is not None]
            fig.add_trace(
                go.Scatter(x=[r["tokens"] for r in done], y=[r[name]["time"] for r in done],
                           mode="lines+markers", name=name, legendgroup=name, showlegend=col == 1,
                           line={"color": palette[i % len(palette)]}),
                row=1, col=col,
            )
        ticks = [r["tokens"] for r in rows]
        fig.update_xaxes(type="log", title_text=f"tokens ({suite.tokens_mean})", tickvals=ticks, row=1, col=col)
        fig.update_yaxes(title_text="time ratio" if col == 1 else None, row=1, col=col)
    fig.update_layout(title="Time ratios (1 = equal)", width=520 * len(models) + 200, height=420,
                      template="plotly_white")
    return fig


def write_figures(report: dict, suite: "Suite", out: Path) -> dict:
    """Each of ``suite.figures`` as a PNG in ``out``; HTML copies where plotly cannot render one."""
    figures = {file: make(report, suite) for file, make, _ in suite.figures}
    try:
        if not os.environ.get("BROWSER_PATH") and Path("/usr/bin/chromium").exists():
            os.environ["BROWSER_PATH"] = "/usr/bin/chromium"  # kaleido's Chrome, if it finds none
        for file, fig in figures.items():
            fig.write_image(Path(out) / file, scale=2)
        described = [f"`{file}` ({caption})" for file, _, caption in suite.figures]
        return {"png": [str(Path(out) / f) for f in figures], "message": "; ".join(described) + "."}
    except Exception as error:  # kaleido or its browser missing: keep interactive copies
        html = [f.rsplit(".", 1)[0] + ".html" for f in figures]
        for file, fig in zip(html, figures.values()):
            fig.write_html(Path(out) / file, include_plotlyjs="cdn")
        message = (f"no PNG: plotly could not render one ({type(error).__name__}: {error}); wrote "
                   + ", ".join(f"`{f}`" for f in html) + " instead (open them in a browser).")
        print(f"[bench] {message}", file=sys.stderr)
        return {"png": None, "html": [str(Path(out) / f) for f in html], "message": message}
