"""What the benchmark writes: ratios between cases, results.json, results.md and a figure."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

from bench.cases import CASES

# name -> (numerator cases, denominator cases); several cases are summed. Memory ratios only
# where both sides are one case (peaks do not add).
RATIOS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "a/d": (("a",), ("d",)),
    "b/e": (("b",), ("e",)),
    "a/c": (("a",), ("c",)),
    "a/g_tl_builtin": (("a",), ("g",)),
    "a/(g+g_t)_tl_builtin": (("a",), ("g", "g_t")),
    "b/e'": (("b",), ("e'",)),
    "f/e'": (("f",), ("e'",)),
    "f_bridge/e'": (("f_bridge",), ("e'",)),
    "a/(d+f)": (("a",), ("d", "f")),
    "(d+f)/d": (("d", "f"), ("d",)),
    "a/d_torch": (("a",), ("d_torch",)),
    "d/d_torch": (("d",), ("d_torch",)),
}
TABLE_RATIOS = ["a/d", "a/(d+f)", "(d+f)/d", "a/d_torch", "d/d_torch", "a/g_tl_builtin",
                "a/(g+g_t)_tl_builtin", "b/e'", "f/e'", "f_bridge/e'", "b/e", "a/c"]


def ratios(name: str, n_tokens: int, row: dict) -> dict:
    """Every ratio of ``RATIOS`` for one model and length; ``None`` (with ``why_none``) where a
    case it needs was skipped or not run."""
    out = {"model": name, "tokens": n_tokens}
    for key, (num, den) in RATIOS.items():
        missing = [c for c in num + den if c not in row or "skipped" in row[c]]
        if missing:
            out[key] = {"time": None, "memory": None, "why_none": f"case {missing[0]} " + (
                "skipped" if missing[0] in row else "not run")}
            continue
        top = sum(row[c]["median_s"] for c in num)
        bottom = sum(row[c]["median_s"] for c in den)
        memory = None
        if len(num) == len(den) == 1 and row[den[0]]["peak_extra_bytes"]:
            memory = row[num[0]]["peak_extra_bytes"] / row[den[0]]["peak_extra_bytes"]
        out[key] = {"time": top / bottom if bottom else None, "memory": memory}
    return out


def write_json(report: dict, out_dir: Path) -> Path:
    path = out_dir / "results.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path


def _fmt(x: Optional[float], digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}g}"


def markdown(report: dict) -> str:
    m = report["machine"]
    s = report["settings"]
    parts = len(report.get("runs", []))
    last = "The last of several parts (each part below): " if parts > 1 else ""
    lines = [
        f"# Logit-lens benchmark (issues 6 and {report.get('issue', 14)})",
        "",
        f"{last}{m['device']} ({m['dtype']}): {m['cpu_model']}, {m['cpu_cores']} cores, "
        f"{m['torch_threads']} torch threads, {m['ram_gb']} GB RAM"
        + (f", {m['gpu']}" if "gpu" in m else "")
        + f"; torch {m['torch']}, transformers {m.get('transformers', '?')}, transformer-lens "
        f"{m['transformer_lens']}. Load average (1, 5, 15 min) at start: "
        f"{m.get('load_average_at_start')}, at the end: {report.get('load_average_at_end')}"
        f"{'; ' + s['machine_note'] if s.get('machine_note') else ''}.",
        f"Median of {s['reps']} repetition(s){' in that part' if parts > 1 else ''}, the cases "
        "interleaved within each repetition. "
        f"Tokens = tokens run, BOS included. Memory: {m['memory_method']}.",
        f"Lens statistics: {m.get('lens_statistics', 'not recorded')}; tile matmuls: "
        f"{m.get('lens_matmul', 'not recorded')}; tiles of "
        f"{s.get('tile_columns', '?')} vocabulary columns, {s['chunk_bytes'] / 2**20:g} MiB. "
        f"Lens forward path: {', '.join(sorted(set(report.get('forward_paths', {}).values()))) or '?'}.",
        "",
        "Cases: " + "; ".join(f"**{k}** {v}" for k, v in report["cases"].items()) + ".",
        "",
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
        note = f"{r['gflop_per_s']:.1f} GFLOP/s" if "gflop_per_s" in r else ""
        if "estimated_peak_extra_bytes" in r:
            note = f"estimated {r['estimated_peak_extra_bytes'] / 1e6:.1f} MB"
        if "forward_path" in r:
            note = f"forward path: {r['forward_path']}"
        loads = [x for x in r.get("load_average_1m_each", []) if x is not None]
        lines.append(
            f"| {r['model']} | {r['tokens']} | {r['case']} {r['label']} | {r['median_s']:.4g} | "
            f"{r['min_s']:.4g} | {r['peak_extra_bytes'] / 1e6:.1f} | "
            f"{_fmt(max(loads) if loads else None)} | {note} |"
        )
    lines += [
        "",
        "Ratios of median times (memory ratios in results.json); — where a case was skipped. "
        "a/(d+f): what the lens adds beyond its forward and the matmuls; (d+f)/d: the best a/d "
        "this forward allows; a/d_torch: the lens against the same tiles' matmuls on torch.mm "
        "(MKL), d/d_torch: oneDNN's matmuls against MKL's; a/g_tl_builtin: lenslib against "
        "TransformerLens's own lens, its top-5 pass alone; a/(g+g_t): against the two calls it "
        "needs for top-5 and targets; b/e': a last-position lens against the Hugging Face SDPA "
        "forward with last logits only; f/e': the lens's forward against that forward.",
        "",
        "| model | tokens | " + " | ".join(TABLE_RATIOS) + " |",
        "|---|---:|" + "---:|" * len(TABLE_RATIOS),
    ]
    for r in report["ratios"]:
        cells = [_fmt(r[name]["time"]) for name in TABLE_RATIOS]
        lines.append(f"| {r['model']} | {r['tokens']} | " + " | ".join(cells) + " |")
    if report.get("agreement"):
        lines += [
            "",
            "Agreement with TransformerLens's lens (case a against g and g_t, last repetition): "
            "top-1 where lenslib's top two probabilities are more than the tie gap apart, entropy "
            "within the tolerance, next-token ranks (TransformerLens's counted from 0).",
            "",
            "| model | tokens | top-1 compared | top-1 disagree | ties skipped | entropy max diff (nats) "
            "| entropy over tol. | ranks compared | ranks disagree | max rank diff | target prob max diff |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for g in report["agreement"]:
            lines.append(
                f"| {g['model']} | {g['tokens']} | {g['top1_compared']} | {g['top1_disagree']} | "
                f"{g['top1_ties_skipped']} | {g['entropy_max_abs_diff_nats']:.2g} | "
                f"{g['entropy_over_tolerance']} | {g.get('ranks_compared', '—')} | "
                f"{g.get('rank_disagree', '—')} | {g.get('rank_max_abs_diff', '—')} | "
                f"{_fmt(g.get('target_prob_max_abs_diff'), 2)} |"
            )
        found = [g for g in report["agreement"] if g["top1_disagree"] or g["entropy_over_tolerance"]
                 or g.get("rank_disagree")]
        lines.append("")
        lines.append("Disagreements (findings): " + ("; ".join(
            f"{g['model']} {g['tokens']}: top-1 at {g['top1_disagree_where']}, ranks at "
            f"{g.get('rank_disagree_where')}" for g in found) if found else "none."))
    text = report["text"]
    repeated = [p for p in text["per_prompt"] if p["passage_copies"] > 1]
    lines += ["", f"Text: `bench/{text['file']}`, {text['words']} words. {text['source']}"]
    if repeated:
        lines.append("Prompts that repeat the passage: " + ", ".join(
            f"{p['model']} {p['tokens']} tokens ({p['passage_copies']} copies)" for p in repeated) + ".")
    if report.get("plot"):
        lines += ["", f"Figure: {report['plot']['message']}"]
    if len(report.get("runs", [])) > 1:
        lines += ["", f"Done in {len(report['runs'])} parts (one process each; every model and length "
                  "lies within one part, so each ratio compares cases from one process):"]
        for part in report["runs"]:
            pm, ps = part["machine"], part["settings"]
            lines.append(f"- `{part['command']}`: {ps['models']} at {ps['tokens']} tokens, cases "
                         f"{', '.join(ps.get('cases_run', []))}, {ps.get('reps', '?')} repetition(s), "
                         f"{pm['torch_threads']} torch thread(s), "
                         f"load average at start {pm.get('load_average_at_start')}"
                         + (f"; replaces the earlier {', '.join(part['replaces'])}" if part.get("replaces") else "")
                         + (f"; {part['note']}" if part.get("note") else "") + ".")
    if report.get("total_seconds"):
        lines += ["", f"Last part: {report['total_seconds']:.0f} s, command `{report.get('command', '')}`."]
    return "\n".join(lines) + "\n"


def figure(report: dict):
    """Median time against tokens, one panel per model, one line per case (log-log)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    models = list(dict.fromkeys(r["model"] for r in report["results"]))
    fig = make_subplots(rows=1, cols=len(models), subplot_titles=models)
    run = list(dict.fromkeys(r["case"] for r in report["results"]))
    for col, name in enumerate(models, start=1):
        for case in [c for c in CASES if c.key in run]:
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
        fig.update_xaxes(type="log", title_text="tokens (BOS included)", tickvals=ticks, row=1, col=col)
        fig.update_yaxes(type="log", title_text="wall time, s (median)" if col == 1 else None, row=1, col=col)
    m = report["machine"]
    fig.update_layout(
        title=f"Logit lens cost vs prompt length ({m['device']}, {m['dtype']}, {m['cpu_cores']} cores)",
        width=520 * len(models) + 360, height=500, template="plotly_white",
    )
    return fig


def ratio_figure(report: dict, names: tuple[str, ...] = ("a/g_tl_builtin", "a/d", "a/(d+f)", "b/e'", "f/e'")):
    """The target ratios against tokens, one panel per model (log x)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    models = list(dict.fromkeys(r["model"] for r in report["ratios"]))
    fig = make_subplots(rows=1, cols=len(models), subplot_titles=models)
    palette = ["#e377c2", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf"]
    for col, model in enumerate(models, start=1):
        rows = sorted((r for r in report["ratios"] if r["model"] == model), key=lambda r: r["tokens"])
        for i, name in enumerate(names):
            done = [r for r in rows if r[name]["time"] is not None]
            fig.add_trace(
                go.Scatter(x=[r["tokens"] for r in done], y=[r[name]["time"] for r in done],
                           mode="lines+markers", name=name, legendgroup=name, showlegend=col == 1,
                           line={"color": palette[i % len(palette)]}),
                row=1, col=col,
            )
        ticks = [r["tokens"] for r in rows]
        fig.update_xaxes(type="log", title_text="tokens (BOS included)", tickvals=ticks, row=1, col=col)
        fig.update_yaxes(title_text="time ratio" if col == 1 else None, row=1, col=col)
    fig.update_layout(title="Time ratios (1 = equal)", width=520 * len(models) + 200, height=420,
                      template="plotly_white")
    return fig


def write_plot(report: dict, out_dir: Path) -> dict:
    figures = {"results.png": figure(report), "ratios.png": ratio_figure(report)}
    try:
        if not os.environ.get("BROWSER_PATH") and Path("/usr/bin/chromium").exists():
            os.environ["BROWSER_PATH"] = "/usr/bin/chromium"  # kaleido's Chrome, if it finds none
        for file, fig in figures.items():
            fig.write_image(out_dir / file, scale=2)
        return {"png": [str(out_dir / f) for f in figures],
                "message": "`results.png` (time vs tokens, log-log) and `ratios.png` (time ratios)."}
    except Exception as error:  # kaleido or its browser missing: keep interactive copies
        for file, fig in figures.items():
            fig.write_html(out_dir / file.replace(".png", ".html"), include_plotlyjs="cdn")
        message = (
            f"no PNG: plotly could not render one ({type(error).__name__}: {error}); "
            "wrote `results.html` and `ratios.html` instead (open them in a browser)."
        )
        print(f"[bench] {message}", file=sys.stderr)
        return {"png": None, "html": [str(out_dir / f.replace('.png', '.html')) for f in figures], "message": message}
