"""Benchmark and fit report of the tuned lens (issue 11).

For each bundled model:

1. the tuned lens from the lenslib cache (fitted first if missing; ``--fresh`` fits into an
   empty temporary cache), with the fit's own timings from its record;
2. the held-out table from its record: full-vocabulary KL(final || lens) in nats and top-1
   agreement, per layer, for the logit lens, the least-squares start and the tuned lens, and
   the checks of the issue's targets (tuned <= logit at every layer, mean KL over all layers
   but the last <= 1.7 nats, tuned >= 15% below the least-squares start, top-1 agreement
   tuned >= logit at every layer), each printed as met or NOT met with its numbers;
3. the cost of a lens call with translators against the plain lens: ``logit_lens`` on the
   first ``--tokens`` tokens of ``bench/passage.txt``, all positions, alternating plain and
   tuned, median of ``--reps``.

    python bench/tuned_bench.py --out bench        # writes tuned_results.md and .json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def targets(lens) -> list[tuple[str, bool, str]]:
    """The issue's targets on the held-out scores in ``lens.record``."""
    from lenslib.reports.tuned import heldout_frame

    return frame_targets(heldout_frame(lens))


def frame_targets(frame) -> list[tuple[str, bool, str]]:
    """The issue's targets on a held-out table (columns ``lens``, ``label``, ``kl_nats``,
    ``top1_agreement``; lenses ``logit``, ``least_squares``, ``tuned``), each met or not, with
    its figures."""
    body = frame[frame.label != "final_post"]
    col = lambda name, stat: body[body.lens == name][stat].to_numpy()  # noqa: E731
    kl_logit, kl_ls, kl_tuned = col("logit", "kl_nats"), col("least_squares", "kl_nats"), col("tuned", "kl_nats")
    a_logit, a_tuned = col("logit", "top1_agreement"), col("tuned", "top1_agreement")
    worse = [int(i) for i in (kl_tuned > kl_logit).nonzero()[0]]
    fewer = [int(i) for i in (a_tuned < a_logit).nonzero()[0]]
    gain = 1 - kl_tuned.mean() / kl_ls.mean()
    return [
        ("tuned KL <= logit KL at every layer", not worse, f"layers where not: {worse}"),
        ("mean tuned KL over layers but the last <= 1.7 nats", kl_tuned.mean() <= 1.7,
         f"{kl_tuned.mean():.3f} nats (logit {kl_logit.mean():.3f}, least squares {kl_ls.mean():.3f})"),
        ("tuned >= 15% below the least-squares start", gain >= 0.15, f"{gain:.1%} below"),
        ("top-1 agreement tuned >= logit at every layer", not fewer, f"layers where not: {fewer}"),
    ]


def target_rows(checks: list[tuple[str, bool, str]]) -> list[str]:
    """Markdown table rows, one per target of :func:`frame_targets`."""
    return [f"| {t} | {'yes' if ok else '**NOT met**'} | {fig} |" for t, ok, fig in checks]


def write_report(out: Path, stem: str, lines: list[str], results: dict) -> None:
    """``{stem}.md`` (the lines, and the load average at the end) and ``{stem}.json`` in ``out``."""
    lines.append(f"Load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}.")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str))


def lens_call_cost(model, lens, tokens: int, reps: int) -> dict:
    import lenslib

    ids = model.to_tokens((HERE / "passage.txt").read_text(), truncate=False)[0, 1:tokens]
    text = model.tokenizer.decode(ids)
    times = {"plain": [], "tuned": []}
    lenslib.logit_lens(model, text, lens=lens)  # warm-up
    for _ in range(reps):
        for name, arg in (("plain", None), ("tuned", lens)):
            started = time.perf_counter()
            lenslib.logit_lens(model, text, lens=arg)
            times[name].append(time.perf_counter() - started)
    plain, tuned = statistics.median(times["plain"]), statistics.median(times["tuned"])
    return {"tokens": tokens, "reps": reps, "plain_s": plain, "tuned_s": tuned, "ratio": tuned / plain,
            "plain_all_s": times["plain"], "tuned_all_s": times["tuned"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2-135m,gemma-3-270m")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--fresh", action="store_true", help="fit into an empty temporary cache")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    if args.fresh:
        os.environ["LENSLIB_CACHE"] = tempfile.mkdtemp(prefix="lenslib-tuned-bench-")
    import lenslib
    from lenslib.reports.tuned import fit_table
    from lenslib.tuned.cache import tuned_lens

    lines = ["# Tuned-lens fit report and benchmark (issue 11)", "",
             f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
             f"{torch.get_num_threads()} torch threads; load average at start "
             f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}.", ""]
    results = {}
    for name in args.models.split(","):
        started = time.perf_counter()
        model = lenslib.load_model(name)
        lens = tuned_lens(model)
        obtained = time.perf_counter() - started
        checks = targets(lens)
        cost = lens_call_cost(model, lens, args.tokens, args.reps)
        results[name] = {"record": lens.record, "obtained_s": obtained, "targets": checks, "lens_call": cost}
        lines += [f"## {name}", "", "```", fit_table(lens), "```", "",
                  f"Cache entry obtained in {obtained:.1f} s in this run (load + fit if it was missing).", "",
                  "| target | met | figures |", "|---|---|---|"]
        lines += target_rows(checks)
        lines += ["", f"Lens call, {cost['tokens']} tokens, all positions, median of {cost['reps']}: "
                  f"plain {cost['plain_s']:.3f} s, with translators {cost['tuned_s']:.3f} s, "
                  f"ratio {cost['ratio']:.3f} (target <= 1.1).", ""]
        print("\n".join(lines[-12:]), flush=True)
        del model
    write_report(args.out, "tuned_results", lines, results)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
