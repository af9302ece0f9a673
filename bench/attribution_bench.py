"""Benchmark attribution and patching against the targets of issue 12, and print the figures.

Per model, in one process:

  sum    ``attribute``'s sum check: max over a few recall prompts of
         ``|contributions.sum() + constant - total| / |total|`` (target <= 1e-4)
  attr   wall time of ``attribute(model, prompt, target=answer)`` over that of
         ``logit_lens(model, prompt, positions="last", target=answer)``: medians of ``--reps``
         interleaved repetitions (target <= 1.5x)
  patch  ``patch_layers`` on a clean/corrupt pair of exactly ``--tokens`` tokens (BOS included),
         every layer x every position: wall time and peak memory (target, Gemma, 16 tokens:
         <= 90 s, <= 1.5 GB); run first, right after loading the model. Memory is the process's peak resident set during the call
         (VmHWM, reset through ``/proc/self/clear_refs`` just before), model weights included,
         and its rise over the resident set before the call, measured after one plain forward
         pass (the weights are memory-mapped and only resident once used).

The machine is shared: the load average before and after each case is printed with it.

    python bench/attribution_bench.py                          # gemma-3-270m and smollm2-135m
    python bench/attribution_bench.py --models gemma-3-270m --reps 5

Writes ``attribution_results.json`` next to this file (or into ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Optional

import torch

HERE = Path(__file__).resolve().parent
CLEAN = "The famous {} is located in the city of"
PAIRS = {"gemma-3-270m": ("Eiffel Tower", "Colosseum", " Paris", " Rome"),
         "smollm2-135m": ("Eiffel Tower", "Colosseum", " Paris", " Rome")}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def sum_check(model, name: str) -> dict:
    from lenslib.causal.attribution import attribute
    from lenslib.recall.dataset import load_recall_dataset

    items = [it for it in load_recall_dataset("country_capital")[:8]]
    worst = 0.0
    for item in items:
        ids = model.tokenizer.encode(item.answer, add_special_tokens=False)
        result = attribute(model, item.prompt, target=ids[0])
        worst = max(worst, abs(result.residual) / max(abs(result.total), 1e-12))
    return {"prompts": len(items), "max_relative_residual": worst}


def attribution_vs_lens(model, reps: int) -> dict:
    import lenslib
    from lenslib.causal.attribution import attribute

    prompt, answer = "The Eiffel Tower is located in the city of", " Paris"
    attribute(model, prompt, target=answer)  # warm up both
    lenslib.logit_lens(model, prompt, positions="last", target=answer)
    times = {"attribute": [], "lens_last": []}
    for _ in range(reps):
        start = time.perf_counter()
        attribute(model, prompt, target=answer)
        times["attribute"].append(time.perf_counter() - start)
        start = time.perf_counter()
        lenslib.logit_lens(model, prompt, positions="last", target=answer)
        times["lens_last"].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"attribute_s": med["attribute"], "lens_last_s": med["lens_last"],
            "ratio": med["attribute"] / med["lens_last"], "reps": reps}


def _pair(model, name: str, n_tokens: int) -> tuple[str, str, str, str]:
    subject, other, answer, versus = PAIRS[name]
    clean, corrupt = CLEAN.format(subject), CLEAN.format(other)
    n_clean, n_corrupt = (model.to_tokens(p).shape[1] for p in (clean, corrupt))
    if n_clean != n_corrupt:
        raise SystemExit(f"{name}: the pair tokenizes to {n_clean} and {n_corrupt} tokens")
    pad = n_tokens - n_clean
    if pad < 0:
        raise SystemExit(f"{name}: the pair is {n_clean} tokens, more than --tokens {n_tokens}")
    prefix = "Yes. " * pad  # each ' Yes.' adds tokens; trim to the exact length below
    for cut in range(len(prefix), -1, -1):
        c, k = prefix[:cut] + clean, prefix[:cut] + corrupt
        if model.to_tokens(c).shape[1] == n_tokens == model.to_tokens(k).shape[1]:
            return c, k, answer, versus
    raise SystemExit(f"{name}: could not build a {n_tokens}-token pair")


def patching(model, name: str, n_tokens: int, batch_size: int) -> dict:
    from lenslib.causal.patching import patch_layers

    clean, corrupt, answer, versus = _pair(model, name, n_tokens)
    with torch.no_grad():  # one plain forward first: the weights are paged in (mmap) on first use
        model(model.to_tokens(clean))
    rss_before = _status_kb("VmRSS") * 1024
    can_reset = _reset_peak()
    load_before = _load()
    start = time.perf_counter()
    result = patch_layers(model, clean, corrupt, target=answer, versus=versus, batch_size=batch_size)
    seconds = time.perf_counter() - start
    peak = _status_kb("VmHWM") * 1024
    layer, pos, best = result.best()
    return {
        "clean": clean, "corrupt": corrupt, "tokens": n_tokens,
        "layers_x_positions": list(result.restored.shape), "seconds": seconds,
        "peak_rss_gb": peak / 1e9 if can_reset else None,
        "rise_over_before_gb": (peak - rss_before) / 1e9 if can_reset else None,
        "rss_before_gb": rss_before / 1e9, "batch_size": batch_size,
        # after patching: file-backed pages (the mmapped safetensors weights, shared libraries;
        # the kernel can drop and re-read them) and anonymous memory (heap, tensors made at run time)
        "rss_file_gb_after": _status_kb("RssFile") * 1024 / 1e9,
        "rss_anon_gb_after": _status_kb("RssAnon") * 1024 / 1e9,
        "load_before": load_before, "load_after": _load(),
        "clean_logit_diff": result.clean_value, "corrupt_logit_diff": result.corrupt_value,
        "best_patch": [layer, pos, best],
    }


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gemma-3-270m,smollm2-135m")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="the weights' dtype (bfloat16 halves their memory; the lens still reduces in float32)")
    args = parser.parse_args(argv)

    import lenslib

    report = {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "dtype": args.dtype, "models": {}}
    for name in args.models.split(","):
        model = lenslib.load_model(name, dtype=getattr(torch, args.dtype))
        row = {"patching": patching(model, name, args.tokens, args.batch_size)}  # first: memory after loading only
        p = row["patching"]
        peak = "n/a" if p["peak_rss_gb"] is None else f"{p['peak_rss_gb']:.2f} GB"
        print(f"{name}: patching {p['layers_x_positions'][0]} layers x {p['layers_x_positions'][1]} positions "
              f"in {p['seconds']:.1f} s, peak RSS {peak} (before {p['rss_before_gb']:.2f} GB; after: "
              f"{p['rss_file_gb_after']:.2f} GB file-backed, {p['rss_anon_gb_after']:.2f} GB anonymous), "
              f"load average {p['load_before']} -> {p['load_after']}; best patch {p['best_patch']}", flush=True)
        row["sum_check"] = sum_check(model, name)
        print(f"{name}: sum check, max relative residual over {row['sum_check']['prompts']} prompts: "
              f"{row['sum_check']['max_relative_residual']:.2e} (target <= 1e-4)", flush=True)
        row["attribution_vs_lens"] = attribution_vs_lens(model, args.reps)
        a = row["attribution_vs_lens"]
        print(f"{name}: attribute {a['attribute_s']:.3f} s, lens positions='last' {a['lens_last_s']:.3f} s, "
              f"ratio {a['ratio']:.2f} (target <= 1.5; median of {a['reps']})", flush=True)
        report["models"][name] = row
        del model
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attribution_results.json").write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
