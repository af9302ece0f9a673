"""Benchmark the logit lens against the naive TransformerLens path (issue 6).

For each model and prompt length (exactly N tokens run, BOS included, of real English text from
``bench/passage.txt``), in one process, median of ``--reps`` repetitions of wall time and peak
extra memory:

  a  ``lenslib.logit_lens(model, text)``: all positions, all statistics
  b  ``lenslib.logit_lens(model, text, positions="last")``
  c  the naive path: ``run_with_cache`` -> ``accumulated_resid(apply_ln=True)`` -> ``unembed``
     -> ``log_softmax``, entropy, top-5 and KL(final || layer) on the whole
     ``[layer, pos, d_vocab]`` tensor; skipped, with its estimated memory, when that exceeds
     ``--naive-mem-limit-gb``
  d  the floor: the unembedding matmul alone over the same layer x pos x d_model x d_vocab,
     tiled exactly as ``lenslib.lens_stats`` tiles it (the same ``column_tiles``), into one
     preallocated, cache-sized buffer
  e  a plain forward pass, ``model(tokens)`` (logits for every position)
  f  the lens's own forward: ``run_with_cache`` of the residual hooks (last position's logits
     only) and ``accumulated_resid(apply_ln=True)``, exactly as (a) runs them before decoding

Besides a/d, b/e and a/c, two ratios split (a): (d+f)/d is the best a/d any lens could reach
with this forward pass, and a/(d+f) is what lenslib adds beyond its forward and the matmuls.

Peak extra memory is, on CPU, the rise of the resident set (VmHWM after resetting it through
``/proc/self/clear_refs``; a 2 ms psutil sampler where that is refused) over the resident set
just before the case; on CUDA, ``torch.cuda.max_memory_allocated`` over the allocation before it.

    python bench/lens_bench.py                       # both real models, 16..2048 tokens, CPU
    python bench/lens_bench.py --tiny                # tiny random model, a few seconds
    python bench/lens_bench.py --device cuda --dtype bf16

Writes ``results.json``, ``results.md`` and ``results.png`` (or ``results.html`` when no PNG
can be rendered) into ``--out``.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import gc
import json
import os
import platform
import re
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import torch

HERE = Path(__file__).resolve().parent
PASSAGE = HERE / "passage.txt"
PASSAGE_SOURCE = (
    "Public-domain English prose written out from memory (small differences from the published "
    "texts are possible): the opening chapter of Dickens, 'A Tale of Two Cities' (1859); the "
    "opening chapter of Austen, 'Pride and Prejudice' (1813); the first paragraph of Melville, "
    "'Moby-Dick' (1851). Repeated, paragraph breaks between copies, only where a prompt needs "
    "more tokens than one copy holds (see 'text' per prompt length)."
)
CASES = {
    "a": "logit_lens, all positions",
    "b": "logit_lens, last position",
    "c": "naive TransformerLens lens",
    "d": "floor: tiled unembedding matmul",
    "e": "forward pass",
    "f": "the lens's forward: run_with_cache + accumulated_resid",
}
RATIOS = [("a", "d"), ("b", "e"), ("a", "c")]
SPLIT = ["(d+f)/d", "a/(d+f)"]  # (a) against the work it cannot avoid
TOP_K = 5
SETTLE_S = 10.0  # idle time after the naive path frees its memory, before the next prompt length
# Peak extra memory of the naive path, in [layer, pos, d_vocab]-sized tensors. This code measured
# +3.46 GB on smollm2-135m at 128 tokens (0.78 GB of logits: logits, log-probs, their exp and a
# product live at once), i.e. 4.4; shared/MODELS.md's +2.0 GB (smollm2) and +6.3 GB (gemma-3-270m)
# at 128 tokens, from another script, are 2.5. The larger is used, so a skip errs on the safe side.
NAIVE_LIVE_TENSORS = 4.5
# One thread for the tiny model: its ops are too small to share, and two OpenMP threads on a
# busy two-core machine wait on each other (0.5 s instead of 0.02 s per forward pass).
TINY = {"models": "tiny-llama", "tokens": "16,32,64", "reps": 2, "threads": 1}
DEFAULTS = {"models": "gemma-3-270m,smollm2-135m", "tokens": "16,128,512,2048", "reps": 3}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help=f"comma-separated (default {DEFAULTS['models']})")
    parser.add_argument("--tokens", help=f"comma-separated prompt lengths, BOS included (default {DEFAULTS['tokens']})")
    parser.add_argument("--reps", type=int, help=f"repetitions per case; the median is reported (default {DEFAULTS['reps']})")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--out", default=str(HERE), help="output folder (default: bench/)")
    parser.add_argument("--naive-mem-limit-gb", type=float, default=None,
                        help="skip case c when its estimated memory exceeds this (default: the "
                             "memory available now minus a safety margin)")
    parser.add_argument("--tiny", action="store_true",
                        help=f"tiny random model at small sizes (models {TINY['models']}, tokens "
                             f"{TINY['tokens']}, reps {TINY['reps']}), a few seconds")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own choice; 1 with --tiny)")
    parser.add_argument("--no-plot", action="store_true", help="skip the figure")
    args = parser.parse_args(argv)
    preset = TINY if args.tiny else DEFAULTS
    args.models = [m.strip() for m in (args.models or preset["models"]).split(",") if m.strip()]
    args.tokens = sorted({int(n) for n in (args.tokens or preset["tokens"]).split(",")})
    args.reps = args.reps or preset["reps"]
    args.threads = args.threads or preset.get("threads")
    if args.reps < 1 or min(args.tokens) < 2:
        parser.error("--reps must be >= 1 and every token count >= 2 (BOS plus one text token)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    return args


# ---------------------------------------------------------------- machine and memory


def machine_info(device: str, dtype: torch.dtype) -> dict:
    from importlib import metadata

    import psutil

    cpu = platform.processor() or "unknown"
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    info = {
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "cpu_model": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformer_lens": metadata.version("transformer-lens"),
        "transformers": metadata.version("transformers"),
        "memory_method": memory_method(device),
        "lens_statistics": _statistics_path(device),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 1e9, 1)
    return info


def _statistics_path(device: str) -> str:
    """Which tile update the lens used: the fused C kernel or plain torch."""
    from lenslib import native_kernel

    if device == "cpu" and native_kernel.available():
        openmp = "OpenMP" if native_kernel.load().lens_tile_openmp() else "Python threads"
        return f"fused C kernel (lenslib/kernels/lens_tile.c, {openmp})"
    return "plain torch (lenslib.tile_update.torch_tile_update)"


def _status_kb(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


@functools.lru_cache(maxsize=None)
def _can_reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
        return _status_kb("VmHWM") > 0
    except (OSError, AttributeError):
        return False


def memory_method(device: str) -> str:
    if device == "cuda":
        return "torch.cuda.max_memory_allocated minus memory_allocated before the case"
    if _can_reset_hwm():
        return "VmHWM (peak RSS, reset via /proc/self/clear_refs) minus VmRSS before the case"
    return "psutil RSS sampled every 2 ms, peak minus RSS before the case"


def _release_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    else:
        try:  # hand freed heap back to the OS, so the next case's growth shows in its RSS
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


class PeakMemory:
    """Peak memory above the level at entry, in bytes (``.extra`` after the block)."""

    def __init__(self, device: str):
        self.device = device
        self.extra = 0

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        elif _can_reset_hwm():
            Path("/proc/self/clear_refs").write_text("5")
            self.base = _status_kb("VmRSS") * 1024
        else:
            import psutil

            process = psutil.Process()
            self.base = self.peak = process.memory_info().rss
            self.done = threading.Event()

            def sample():
                while not self.done.wait(0.002):
                    self.peak = max(self.peak, process.memory_info().rss)

            self.sampler = threading.Thread(target=sample, daemon=True)
            self.sampler.start()
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        elif _can_reset_hwm():
            peak = _status_kb("VmHWM") * 1024
        else:
            self.done.set()
            self.sampler.join()
            peak = max(self.peak, __import__("psutil").Process().memory_info().rss)
        self.extra = max(0, peak - self.base)
        return False


def measure(fn: Callable[[], object], reps: int, device: str) -> dict:
    """Run ``fn`` ``reps`` times; wall seconds and peak extra bytes of each run."""
    times, peaks = [], []
    for _ in range(reps):
        _release_memory(device)
        with PeakMemory(device) as memory:
            start = time.perf_counter()
            with torch.no_grad():
                result = fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            del result
        peaks.append(memory.extra)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
        "peak_extra_bytes": max(peaks),
        "peak_extra_bytes_each": peaks,
    }


def naive_limit_bytes(device: str, limit_gb: Optional[float]) -> tuple[int, str]:
    if limit_gb is not None:
        return int(limit_gb * 1e9), f"--naive-mem-limit-gb {limit_gb}"
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return int(0.8 * free), "80% of the GPU memory free at start"
    import psutil

    available = psutil.virtual_memory().available
    margin = max(2e9, 0.2 * available)
    return int(available - margin), "RAM available at start minus max(2 GB, 20%)"


# ---------------------------------------------------------------- text


def prompt_of_length(model, text: str, n_tokens: int) -> tuple[str, torch.Tensor, int]:
    """A prefix of ``text`` (repeated if need be) that ``model.to_tokens`` makes exactly ``n_tokens``.

    Returns the prompt, its tokens ``[1, n_tokens]`` (BOS included) and how many copies of the
    passage it needed.
    """
    tokenizer = model.tokenizer
    copies = 1
    while True:
        source = "\n\n".join([text] * copies)
        encoded = tokenizer(source, add_special_tokens=False, return_offsets_mapping=True)
        if len(encoded["input_ids"]) >= n_tokens + 8:
            break
        copies += 1
    ends = [end for _, end in encoded["offset_mapping"]]
    n_text = n_tokens - 1  # the bridge prepends BOS
    for _ in range(50):
        n_text = min(max(n_text, 1), len(ends))
        prompt = source[: ends[n_text - 1]]
        tokens = model.to_tokens(prompt)
        if tokens.shape[1] == n_tokens:
            return prompt, tokens, copies
        n_text += n_tokens - tokens.shape[1]
    raise RuntimeError(f"found no prefix of the passage that is exactly {n_tokens} tokens")


# ---------------------------------------------------------------- the cases


def case_lens(model, prompt: str, positions):
    import lenslib

    return lenslib.logit_lens(model, prompt, k=TOP_K, positions=positions)


def case_naive(model, tokens: torch.Tensor):
    _, cache = model.run_with_cache(tokens)
    acc = cache.accumulated_resid(apply_ln=True)  # [layer, batch, pos, d_model]
    logits = model.unembed(acc)  # [layer, batch, pos, d_vocab]
    lp = logits.log_softmax(-1)
    entropy = -(lp.exp() * lp).sum(-1)
    top_lp, top_ids = lp.topk(TOP_K, dim=-1)
    kl = (lp[-1:].exp() * (lp[-1:] - lp)).sum(-1)  # KL(final || layer), nats
    return entropy, top_lp, top_ids, kl


def normalised_resid(model, tokens: torch.Tensor) -> torch.Tensor:
    """``[layer, pos, d_model]``: what lenslib hands to ``lens_stats`` for all positions, computed
    as ``logit_lens`` computes it (case f)."""
    from lenslib.lens import _forward_kwargs, _residual_hooks

    _, cache = model.run_with_cache(
        tokens, names_filter=_residual_hooks(int(model.cfg.n_layers), False), **_forward_kwargs(model)
    )
    return cache.accumulated_resid(apply_ln=True)[:, 0]


def case_floor(resid: torch.Tensor, W_U: torch.Tensor, b_U: Optional[torch.Tensor], chunk_bytes: int):
    """The unembedding matmuls alone, tiled exactly as ``lens_stats`` tiles them (same tiles,
    same buffer, same code: ``lens_stats.column_tiles``). Returns the last tile."""
    from lenslib.lens_stats import column_tiles, effective_bias, tile_shape

    n_layer, n_pos, d_model = resid.shape
    b_U = effective_bias(b_U)
    block, columns = tile_shape(n_layer, W_U.shape[1], chunk_bytes)
    buffer = torch.empty(min(block, n_pos) * n_layer * columns, device=W_U.device)
    rows_by_pos = resid.transpose(0, 1)  # [pos, layer, d_model], as lens_stats orders rows
    tile = buffer
    for start in range(0, n_pos, block):
        rows = rows_by_pos[start : start + block].reshape(-1, d_model).to(W_U.dtype)
        for _, tile in column_tiles(rows, W_U, b_U, columns, buffer):
            pass
    return tile


def case_forward(model, tokens: torch.Tensor):
    return model(tokens)


# ---------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> dict:
    import lenslib
    from lenslib.lens_stats import DEFAULT_CHUNK_BYTES, TILE_COLUMNS

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    limit, limit_rule = naive_limit_bytes(args.device, args.naive_mem_limit_gb)
    text = PASSAGE.read_text(encoding="utf-8").strip()
    report = {
        "issue": 6,
        "machine": machine_info(args.device, dtype),
        "settings": {
            "models": args.models, "tokens": args.tokens, "reps": args.reps, "top_k": TOP_K,
            "chunk_bytes": DEFAULT_CHUNK_BYTES, "tile_columns": TILE_COLUMNS,
            "naive_mem_limit_bytes": limit,
            "naive_mem_limit_rule": limit_rule, "naive_live_tensors": NAIVE_LIVE_TENSORS,
            "tokens_counted": "tokens run, BOS included (= positions decoded by a and c)",
            "grad": "every case runs under torch.no_grad()",
        },
        "cases": CASES,
        "text": {"file": PASSAGE.name, "source": PASSAGE_SOURCE, "words": len(text.split()), "per_prompt": []},
        "results": [],
        "ratios": [],
    }
    for name in args.models:
        print(f"[bench] loading {name} on {args.device} ({args.dtype})", flush=True)
        model = lenslib.load_model(name, device=args.device, dtype=dtype)
        cfg = model.cfg
        n_layer = int(cfg.n_layers) + 1  # accumulated_resid: embeddings + each block's output
        with torch.no_grad():  # warm-up: first calls allocate and pick kernels
            warm, warm_tokens, _ = prompt_of_length(model, text, min(16, int(cfg.n_ctx)))
            case_lens(model, warm, None)
            case_forward(model, warm_tokens.to(args.device))
        for n_tokens in args.tokens:
            if n_tokens > int(cfg.n_ctx):
                print(f"[bench] {name}: {n_tokens} tokens exceeds its context {cfg.n_ctx}; skipped", flush=True)
                continue
            prompt, tokens, copies = prompt_of_length(model, text, n_tokens)
            tokens = tokens.to(args.device)
            report["text"]["per_prompt"].append(
                {"model": name, "tokens": n_tokens, "chars": len(prompt), "passage_copies": copies}
            )
            logits_bytes = n_layer * n_tokens * int(cfg.d_vocab) * torch.finfo(dtype).bits // 8
            naive_estimate = int(NAIVE_LIVE_TENSORS * logits_bytes)
            with torch.no_grad():
                resid = normalised_resid(model, tokens)
            # The naive path runs last, then the process idles: right after it freed its
            # gigabytes this VM ran the next case slower (the floor, measured then, came out
            # slower than the lens itself: Gemma at 128 tokens, 6.5 s against 5.6 s).
            runs = {
                "a": lambda: case_lens(model, prompt, None),
                "b": lambda: case_lens(model, prompt, "last"),
                "d": lambda: case_floor(resid, model.W_U, getattr(model, "b_U", None), DEFAULT_CHUNK_BYTES),
                "e": lambda: case_forward(model, tokens),
                "f": lambda: normalised_resid(model, tokens),
                "c": lambda: case_naive(model, tokens),
            }
            row = {}
            for case, fn in runs.items():
                entry = {
                    "model": name, "tokens": n_tokens, "case": case, "label": CASES[case],
                    "device": args.device, "dtype": args.dtype, "n_layer": n_layer,
                    "d_model": int(cfg.d_model), "d_vocab": int(cfg.d_vocab),
                }
                if case == "c":
                    entry["estimated_peak_extra_bytes"] = naive_estimate
                if case == "c" and naive_estimate > limit:
                    entry["skipped"] = (
                        f"estimated {naive_estimate / 1e9:.1f} GB ({NAIVE_LIVE_TENSORS} x the "
                        f"{logits_bytes / 1e9:.2f} GB [layer, pos, d_vocab] logits) exceeds the "
                        f"limit of {limit / 1e9:.1f} GB ({limit_rule})"
                    )
                    print(f"[bench] {name} {n_tokens:>5} {case}: skipped, {entry['skipped']}", flush=True)
                else:
                    entry.update(measure(fn, args.reps, args.device))
                    if case == "d":
                        flops = 2 * n_layer * n_tokens * int(cfg.d_model) * int(cfg.d_vocab)
                        entry["gflop_per_s"] = flops / entry["median_s"] / 1e9
                    print(
                        f"[bench] {name} {n_tokens:>5} {case}: {entry['median_s']:.4f} s, "
                        f"+{entry['peak_extra_bytes'] / 1e6:.1f} MB  ({CASES[case]})", flush=True,
                    )
                row[case] = entry
                report["results"].append(entry)
                if case == "c" and "skipped" not in entry:
                    _release_memory(args.device)
                    time.sleep(0 if args.tiny else SETTLE_S)
                _write_json(report, out_dir)  # partial results survive an interrupted run
            del resid
            report["ratios"].append(ratios(name, n_tokens, row))
        del model
        _release_memory(args.device)
    return report


def _ratio(num: dict, den: dict, key: str) -> Optional[float]:
    if "skipped" in num or "skipped" in den or not den.get(key):
        return None
    return num[key] / den[key]


def ratios(name: str, n_tokens: int, row: dict) -> dict:
    out = {"model": name, "tokens": n_tokens}
    for num, den in RATIOS:
        out[f"{num}/{den}"] = {
            "time": _ratio(row[num], row[den], "median_s"),
            "memory": _ratio(row[num], row[den], "peak_extra_bytes"),
        }
        skipped = [row[c]["skipped"] for c in (num, den) if "skipped" in row[c]]
        if skipped:
            out[f"{num}/{den}"]["why_none"] = f"case {den if 'skipped' in row[den] else num} skipped"
    unavoidable = row["d"]["median_s"] + row["f"]["median_s"]
    out["(d+f)/d"] = {"time": unavoidable / row["d"]["median_s"]}
    out["a/(d+f)"] = {"time": row["a"]["median_s"] / unavoidable}
    return out


# ---------------------------------------------------------------- outputs


def _write_json(report: dict, out_dir: Path) -> Path:
    path = out_dir / "results.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path


def _fmt(x: Optional[float], digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}g}"


def markdown(report: dict) -> str:
    m = report["machine"]
    s = report["settings"]
    lines = [
        "# Logit-lens benchmark (issue 6)",
        "",
        f"{m['device']} ({m['dtype']}): {m['cpu_model']}, {m['cpu_cores']} cores, "
        f"{m['torch_threads']} torch threads, {m['ram_gb']} GB RAM"
        + (f", {m['gpu']}" if "gpu" in m else "")
        + f"; torch {m['torch']}, transformer-lens {m['transformer_lens']}.",
        f"Median of {s['reps']} repetition(s). Tokens = tokens run, BOS included. "
        f"Memory: {m['memory_method']}.",
        f"Lens statistics: {m.get('lens_statistics', 'not recorded')}; tiles of "
        f"{s.get('tile_columns', '?')} vocabulary columns, {s['chunk_bytes'] / 2**20:g} MiB.",
        "",
        "Cases: " + "; ".join(f"**{k}** {v}" for k, v in report["cases"].items()) + ".",
        "",
        "| model | tokens | case | median s | min s | peak extra MB | note |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        if "skipped" in r:
            lines.append(
                f"| {r['model']} | {r['tokens']} | {r['case']} {r['label']} | — | — | "
                f"(est. {r['estimated_peak_extra_bytes'] / 1e6:.0f}) | skipped: {r['skipped']} |"
            )
            continue
        note = f"{r['gflop_per_s']:.1f} GFLOP/s" if "gflop_per_s" in r else ""
        if "estimated_peak_extra_bytes" in r:
            note = f"estimated {r['estimated_peak_extra_bytes'] / 1e6:.1f} MB"
        lines.append(
            f"| {r['model']} | {r['tokens']} | {r['case']} {r['label']} | {r['median_s']:.4g} | "
            f"{r['min_s']:.4g} | {r['peak_extra_bytes'] / 1e6:.1f} | {note} |"
        )
    lines += [
        "",
        "Ratios (time, memory); — where a case was skipped or used no measurable memory. "
        "(d+f)/d: the best a/d possible with this forward pass; a/(d+f): what the lens adds "
        "beyond its forward and the matmuls (time).",
        "",
        "| model | tokens | " + " | ".join(f"{a}/{b} time | {a}/{b} memory" for a, b in RATIOS)
        + " | " + " | ".join(SPLIT) + " |",
        "|---|---:|" + "---:|" * (2 * len(RATIOS) + len(SPLIT)),
    ]
    for r in report["ratios"]:
        cells = []
        for a, b in RATIOS:
            cells += [_fmt(r[f"{a}/{b}"]["time"]), _fmt(r[f"{a}/{b}"]["memory"])]
        cells += [_fmt(r[name]["time"]) for name in SPLIT]
        lines.append(f"| {r['model']} | {r['tokens']} | " + " | ".join(cells) + " |")
    text = report["text"]
    repeated = [p for p in text["per_prompt"] if p["passage_copies"] > 1]
    lines += ["", f"Text: `bench/{text['file']}`, {text['words']} words. {text['source']}"]
    if repeated:
        lines.append("Prompts that repeat the passage: " + ", ".join(
            f"{p['model']} {p['tokens']} tokens ({p['passage_copies']} copies)" for p in repeated) + ".")
    if report.get("plot"):
        lines += ["", f"Figure: {report['plot']['message']}"]
    return "\n".join(lines) + "\n"


def figure(report: dict):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    models = list(dict.fromkeys(r["model"] for r in report["results"]))
    fig = make_subplots(rows=1, cols=len(models), subplot_titles=models)
    colours = dict(zip(CASES, ["#1f77b4", "#2ca02c", "#d62728", "#7f7f7f", "#ff7f0e", "#9467bd"]))
    for col, name in enumerate(models, start=1):
        for case, label in CASES.items():
            done = [r for r in report["results"] if r["model"] == name and r["case"] == case and "skipped" not in r]
            fig.add_trace(
                go.Scatter(
                    x=[r["tokens"] for r in done], y=[r["median_s"] for r in done],
                    mode="lines+markers", name=f"{case}: {label}", legendgroup=case,
                    showlegend=col == 1, line={"color": colours[case]},
                ),
                row=1, col=col,
            )
        ticks = sorted({r["tokens"] for r in report["results"] if r["model"] == name})
        fig.update_xaxes(type="log", title_text="tokens (BOS included)", tickvals=ticks, row=1, col=col)
        fig.update_yaxes(type="log", title_text="wall time, s (median)" if col == 1 else None, row=1, col=col)
    m = report["machine"]
    fig.update_layout(
        title=f"Logit lens cost vs prompt length ({m['device']}, {m['dtype']}, {m['cpu_cores']} cores)",
        width=520 * len(models) + 260, height=480, template="plotly_white",
    )
    return fig


def write_plot(report: dict, out_dir: Path) -> dict:
    fig = figure(report)
    png = out_dir / "results.png"
    try:
        if not os.environ.get("BROWSER_PATH") and Path("/usr/bin/chromium").exists():
            os.environ["BROWSER_PATH"] = "/usr/bin/chromium"  # kaleido's Chrome, if it finds none
        fig.write_image(png, scale=2)
        return {"png": str(png), "message": f"`{png.name}` (time vs tokens, log-log)."}
    except Exception as error:  # kaleido or its browser missing: keep an interactive copy
        html = out_dir / "results.html"
        fig.write_html(html, include_plotlyjs="cdn")
        message = (
            f"no PNG: plotly could not render one ({type(error).__name__}: {error}); "
            f"wrote `{html.name}` instead (open it in a browser)."
        )
        print(f"[bench] {message}", file=sys.stderr)
        return {"png": None, "html": str(html), "message": message}


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = run(args)
    finally:
        torch.set_num_threads(threads)
    out_dir = Path(args.out)
    if not args.no_plot and report["results"]:
        report["plot"] = write_plot(report, out_dir)
    report["total_seconds"] = time.perf_counter() - started
    _write_json(report, out_dir)
    (out_dir / "results.md").write_text(markdown(report), encoding="utf-8")
    print(f"[bench] wrote {out_dir / 'results.json'} and results.md in {report['total_seconds']:.0f} s", flush=True)
    return report


if __name__ == "__main__":
    main()
