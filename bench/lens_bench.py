"""Benchmark the logit lens against the naive path, TransformerLens's own lens and the forward pass.

For each model and prompt length (exactly N tokens run, BOS included, of real English text from
``bench/passage.txt``), in one process, median of ``--reps`` repetitions of wall time and peak
extra memory, the cases interleaved within each repetition (so a slow spell on a shared machine
falls on every case alike). The cases (``bench/cases.py``; adding one touches that file only):

  a   ``lenslib.logit_lens(model, text)``: all positions, all statistics
  b   ``lenslib.logit_lens(model, text, positions="last")``
  d   the floor: the unembedding matmul alone over the same layer x pos x d_model x d_vocab,
      tiled exactly as ``lenslib.core.stats`` tiles it, on the same library (``lenslib.core.onednn``)
  d_torch  the same tiles on ``torch.mm`` (MKL on CPU): the floor before lenslib used oneDNN
  e   the bridge's forward pass, ``model(tokens)`` (logits for every position)
  e'  a separate Hugging Face model object, SDPA attention, last position's logits only: what a
      user pays for the model's own prediction
  f   the lens's own forward: the residual stream as ``logit_lens`` gets it
      (``lenslib.core.forward``: SDPA where exact) and ``accumulated_resid(apply_ln=True)``
  f_bridge  the same through the bridge's ``run_with_cache`` (eager attention)
  g   TransformerLens 4.3's ``tools.analysis.logit_lens``, ``top_k=5``, all positions, probs
  g_t the same with per-row ``targets`` (the next token): it takes ``top_k`` or ``targets`` per
      call, so matching what (a) returns takes g and g_t
  c   the naive path: ``run_with_cache`` -> ``accumulated_resid(apply_ln=True)`` -> ``unembed``
      -> ``log_softmax``, entropy, top-5, KL on the whole ``[layer, pos, d_vocab]`` tensor;
      skipped, with its estimated memory, when that exceeds ``--naive-mem-limit-gb``

Ratios (``bench/report.py``) include ``a/g_tl_builtin``, ``b/e'``, ``f/e'``, ``a/(d+f)``,
``a/d_torch``; the
agreement of (a) with (g, g_t) is checked on the last repetition's results.

    python bench/lens_bench.py                       # both real models, 128..2048 tokens, CPU
    python bench/lens_bench.py --tiny                # tiny random model, a few seconds
    python bench/lens_bench.py --device cuda --dtype bf16

Writes ``results.json``, ``results.md``, ``results.png`` and ``ratios.png`` (or ``.html`` when no
PNG can be rendered) into ``--out``.
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

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # `python bench/lens_bench.py` puts bench/ first, not the root
    sys.path.insert(0, str(HERE.parent))

from bench import cases as bench_cases  # noqa: E402
from bench.cases import (  # noqa: E402,F401  (re-exported: tests and users call them from here)
    NAIVE_LIVE_TENSORS,
    TOP_K,
    Context,
    agreement,
    case_floor,
    case_forward,
    case_lens,
    case_naive,
    normalised_resid,
)
from bench.measure import (  # noqa: E402
    load_average,
    machine_info,
    measure_interleaved,
    naive_limit_bytes,
    release_memory,
)
from bench.report import figure, markdown, ratios, write_json, write_plot  # noqa: E402,F401

PASSAGE = HERE / "passage.txt"
PASSAGE_SOURCE = (
    "Public-domain English prose written out from memory (small differences from the published "
    "texts are possible): the opening chapter of Dickens, 'A Tale of Two Cities' (1859); the "
    "opening chapter of Austen, 'Pride and Prejudice' (1813); the first paragraph of Melville, "
    "'Moby-Dick' (1851). Repeated, paragraph breaks between copies, only where a prompt needs "
    "more tokens than one copy holds (see 'text' per prompt length)."
)
CASES = bench_cases.LABELS
SETTLE_S = 10.0  # idle time after the naive path frees its memory
# One thread for the tiny model: its ops are too small to share, and two OpenMP threads on a
# busy two-core machine wait on each other (0.5 s instead of 0.02 s per forward pass).
TINY = {"models": "tiny-llama", "tokens": "16,32,64", "reps": 2, "threads": 1, "tl_max_tokens": 10**9}
DEFAULTS = {"models": "gemma-3-270m,smollm2-135m", "tokens": "128,512,2048", "reps": 3, "tl_max_tokens": 512}


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help=f"comma-separated (default {DEFAULTS['models']})")
    parser.add_argument("--tokens", help=f"comma-separated prompt lengths, BOS included (default {DEFAULTS['tokens']})")
    parser.add_argument("--reps", type=int, help=f"repetitions per case; the median is reported (default {DEFAULTS['reps']})")
    parser.add_argument("--cases", help=f"comma-separated subset of {','.join(CASES)} (default: all)")
    parser.add_argument("--tl-max-tokens", type=int, default=None,
                        help=f"run TransformerLens's lens (g, g_t) up to this many tokens (default "
                             f"{DEFAULTS['tl_max_tokens']}; it is the slowest case)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--out", default=str(HERE), help="output folder (default: bench/)")
    parser.add_argument("--note", default="", help="a line about the machine (e.g. who else used it)")
    parser.add_argument("--naive-mem-limit-gb", type=float, default=None,
                        help="skip case c when its estimated memory exceeds this (default: the "
                             "memory available now minus a safety margin)")
    parser.add_argument("--tiny", action="store_true",
                        help=f"tiny random model at small sizes (models {TINY['models']}, tokens "
                             f"{TINY['tokens']}, reps {TINY['reps']}), a few seconds")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own choice; 1 with --tiny)")
    parser.add_argument("--no-plot", action="store_true", help="skip the figures")
    parser.add_argument("--append", action="store_true",
                        help="add to the results.json already in --out (a run done in parts: each "
                             "part's machine, settings and load are kept under 'runs')")
    args = parser.parse_args(argv)
    preset = TINY if args.tiny else DEFAULTS
    args.models = [m.strip() for m in (args.models or preset["models"]).split(",") if m.strip()]
    args.tokens = sorted({int(n) for n in (args.tokens or preset["tokens"]).split(",")})
    args.reps = args.reps or preset["reps"]
    args.threads = args.threads or preset.get("threads")
    args.tl_max_tokens = args.tl_max_tokens if args.tl_max_tokens is not None else preset["tl_max_tokens"]
    chosen = [c.strip() for c in (args.cases or ",".join(CASES)).split(",") if c.strip()]
    unknown = [c for c in chosen if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {', '.join(CASES)}")
    args.cases = [c for c in CASES if c in chosen]  # the registry's order
    if args.reps < 1 or min(args.tokens) < 2:
        parser.error("--reps must be >= 1 and every token count >= 2 (BOS plus one text token)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    return args


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


def run(args: argparse.Namespace) -> dict:
    import lenslib
    from lenslib.core.bridge import residual_hooks
    from lenslib.core.forward import sdpa_unavailable_reason
    from lenslib.core.stats import DEFAULT_CHUNK_BYTES, TILE_COLUMNS

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    limit, limit_rule = naive_limit_bytes(args.device, args.naive_mem_limit_gb)
    text = PASSAGE.read_text(encoding="utf-8").strip()
    report = {
        "issue": 14,
        "command": "python bench/lens_bench.py " + " ".join(shlex.quote(a) for a in (args.argv or [])),
        "machine": machine_info(args.device, dtype),
        "settings": {
            "models": args.models, "tokens": args.tokens, "reps": args.reps, "cases_run": args.cases,
            "top_k": TOP_K, "chunk_bytes": DEFAULT_CHUNK_BYTES, "tile_columns": TILE_COLUMNS,
            "naive_mem_limit_bytes": limit, "naive_mem_limit_rule": limit_rule,
            "naive_live_tensors": NAIVE_LIVE_TENSORS, "tl_max_tokens": args.tl_max_tokens,
            "tokens_counted": "tokens run, BOS included (= positions decoded by a, c and g)",
            "grad": "every case runs under torch.no_grad()",
            "order": "each repetition runs every case once, in the order of 'cases'",
            "machine_note": args.note,
        },
        "cases": {k: CASES[k] for k in args.cases},
        "text": {"file": PASSAGE.name, "source": PASSAGE_SOURCE, "words": len(text.split()), "per_prompt": []},
        "forward_paths": {},
        "results": [],
        "ratios": [],
        "agreement": [],
    }
    this_run = {k: report[k] for k in ("command", "machine", "settings", "cases")}
    report["runs"] = [this_run]
    previous = out_dir / "results.json"
    if args.append and previous.exists():
        earlier = json.loads(previous.read_text(encoding="utf-8"))
        report["runs"] = earlier.get("runs") or [{k: earlier[k] for k in this_run if k in earlier}]
        report["runs"].append(this_run)
        # a model and length measured again replaces the earlier measurement (said in 'runs')
        again = {(m, n) for m in args.models for n in args.tokens}
        old = lambda rows: [r for r in rows if (r["model"], r["tokens"]) not in again]  # noqa: E731
        replaced = sorted({(r["model"], r["tokens"]) for r in earlier.get("results", [])} & again)
        if replaced:
            this_run["replaces"] = [f"{m} at {n} tokens" for m, n in replaced]
        for key in ("results", "ratios", "agreement"):
            report[key] = old(earlier.get(key, []))
        report["text"]["per_prompt"] = old(earlier["text"]["per_prompt"])
        report["forward_paths"] = earlier.get("forward_paths", {})
        report["cases"] = {**earlier.get("cases", {}), **report["cases"]}
    # Every model stays loaded and the lengths are the outer loop: a run cut short still has
    # every model at the shorter lengths.
    loaded = {}
    for name in args.models:
        print(f"[bench] loading {name} on {args.device} ({args.dtype})", flush=True)
        model = lenslib.load_model(name, device=args.device, dtype=dtype)
        hf_sdpa = bench_cases.load_hf_sdpa(name, dtype, args.device) if "e'" in args.cases else None
        reason = sdpa_unavailable_reason(model, residual_hooks(int(model.cfg.n_layers), False))
        report["forward_paths"][name] = "bridge" if reason else "sdpa"
        with torch.no_grad():  # warm-up: first calls allocate, pick kernels, build the SDPA shadow
            warm, warm_tokens, _ = prompt_of_length(model, text, min(16, int(model.cfg.n_ctx)))
            case_lens(model, warm, None)
            case_forward(model, warm_tokens.to(args.device))
            if hf_sdpa is not None:
                bench_cases.case_hf_sdpa(hf_sdpa, warm_tokens.to(args.device))
        loaded[name] = (model, hf_sdpa)
    for n_tokens in args.tokens:
        for name, (model, hf_sdpa) in loaded.items():
            cfg = model.cfg
            if n_tokens > int(cfg.n_ctx):
                print(f"[bench] {name}: {n_tokens} tokens exceeds its context {cfg.n_ctx}; skipped", flush=True)
                continue
            prompt, tokens, copies = prompt_of_length(model, text, n_tokens)
            tokens = tokens.to(args.device)
            report["text"]["per_prompt"].append(
                {"model": name, "tokens": n_tokens, "chars": len(prompt), "passage_copies": copies}
            )
            ctx = Context(model=model, name=name, prompt=prompt, tokens=tokens, n_tokens=n_tokens,
                          device=args.device, hf_sdpa=hf_sdpa, naive_limit=limit,
                          naive_limit_rule=limit_rule, tl_max_tokens=args.tl_max_tokens)
            with torch.no_grad():
                ctx.resid = normalised_resid(model, tokens)
            entries, runs, after = {}, {}, {}
            for key in args.cases:
                case = bench_cases.BY_KEY[key]
                entry = {
                    "model": name, "tokens": n_tokens, "case": key, "label": case.label,
                    "device": args.device, "dtype": args.dtype, "n_layer": ctx.n_layer,
                    "d_model": int(cfg.d_model), "d_vocab": int(cfg.d_vocab),
                }
                if key == "c":
                    entry["estimated_peak_extra_bytes"] = bench_cases.naive_estimate(ctx)
                if key in ("a", "b", "f"):
                    entry["forward_path"] = report["forward_paths"][name]
                skip = case.skip(ctx)
                if skip:
                    entry["skipped"] = skip
                    print(f"[bench] {name} {n_tokens:>5} {key}: skipped, {skip}", flush=True)
                else:
                    runs[key] = case.make(ctx)
                    if case.settle_after:
                        after[key] = _settle(args)
                entries[key] = entry
            measured, kept = measure_interleaved(runs, args.reps, args.device, after=after,
                                                 keep=("a", "g", "g_t"))
            for key, entry in entries.items():
                if key in measured:
                    entry.update(measured[key])
                    if key == "d":
                        flops = 2 * ctx.n_layer * n_tokens * int(cfg.d_model) * int(cfg.d_vocab)
                        entry["gflop_per_s"] = flops / entry["median_s"] / 1e9
                    print(f"[bench] {name} {n_tokens:>5} {key}: {entry['median_s']:.4f} s, "
                          f"+{entry['peak_extra_bytes'] / 1e6:.1f} MB  ({entry['label']})", flush=True)
                report["results"].append(entry)
            if "a" in kept and "g" in kept:
                found = agreement(kept["a"], kept["g"], kept.get("g_t"))
                report["agreement"].append({"model": name, "tokens": n_tokens, **found})
                print(f"[bench] {name} {n_tokens:>5} agreement with TransformerLens: {found}", flush=True)
            del kept, runs, ctx
            report["ratios"].append(ratios(name, n_tokens, entries))
            write_json(report, out_dir)  # partial results survive an interrupted run
            (out_dir / "results.md").write_text(markdown(report), encoding="utf-8")
    del loaded
    release_memory(args.device)
    return report


def _settle(args):
    def settle():
        release_memory(args.device)
        time.sleep(0 if args.tiny else SETTLE_S)

    return settle


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = run(args)
    finally:
        torch.set_num_threads(threads)
    out_dir = Path(args.out)
    report["load_average_at_end"] = load_average()
    if not args.no_plot and report["results"]:
        report["plot"] = write_plot(report, out_dir)
    report["total_seconds"] = time.perf_counter() - started
    write_json(report, out_dir)
    (out_dir / "results.md").write_text(markdown(report), encoding="utf-8")
    print(f"[bench] wrote {out_dir / 'results.json'} and results.md in {report['total_seconds']:.0f} s", flush=True)
    return report


if __name__ == "__main__":
    main()
