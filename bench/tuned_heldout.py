"""The cached tuned lenses scored on the whole held-out split, full vocabulary (issue 11).

The fit report (``tuned_results.md``) scores each lens on the first ~500-600 tokens of the
held-out split, to keep set-up short. This scores the logit lens, the least-squares start and
the tuned lens on all of it (``heldout_tokens`` of the recipe: 10,240), through the same tiled
full-vocabulary statistics (:func:`lenslib.tuned.evaluate.evaluate_lens`), and checks the issue's
targets on that. It costs about 0.14 s per token per three lenses on Gemma on 2 cores.

    python bench/tuned_heldout.py --out bench     # writes tuned_heldout.md and .json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2-135m,gemma-3-270m")
    parser.add_argument("--tokens", type=int, default=None, help="held-out tokens to score (default: the recipe's heldout_tokens)")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()

    from tuned_bench import frame_targets, target_rows, write_report

    import lenslib
    from lenslib.reports.tuned import side_by_side
    from lenslib.tuned import corpus
    from lenslib.tuned.cache import tuned_lens
    from lenslib.tuned.evaluate import evaluate_lens
    from lenslib.tuned.fit import collect_residuals

    lines = ["# Tuned lenses on the whole held-out split (issue 11)", "",
             f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} torch threads; "
             f"load average at start {' '.join(f'{x:.1f}' for x in os.getloadavg())}.", ""]
    results = {}
    for name in args.models.split(","):
        model = lenslib.load_model(name)
        tuned = tuned_lens(model, progress=False)
        start = tuned_lens(model, least_squares=True, progress=False)
        recipe = tuned.record["fit"]["recipe"]
        n_tokens = args.tokens or recipe["heldout_tokens"]
        texts = corpus.split_texts(model.tokenizer, "heldout", n_tokens, seq_len=recipe["seq_len"], seed=recipe["seed"])
        started = time.perf_counter()
        held = collect_residuals(model, texts, progress=False)
        scores = evaluate_lens(model, {"logit": None, "least_squares": start, "tuned": tuned}, held, progress=True)
        seconds = time.perf_counter() - started
        checks = frame_targets(scores.table)
        means = {k: scores.mean_kl(k) for k in ("logit", "least_squares", "tuned")}
        results[name] = {"heldout_tokens": held.n_tokens, "windows": len(texts), "seconds": seconds,
                         "mean_kl_nats_but_last": means, "targets": checks,
                         "table": scores.table.to_dict(orient="records")}
        lines += [f"## {name}", "",
                  f"{held.n_tokens} held-out tokens ({len(texts)} windows of the held-out split, "
                  f"{corpus.SOURCE}), scored in {seconds:.0f} s.", "", "```",
                  side_by_side(scores.table).to_string(index=False, float_format=lambda x: f"{x:.3f}"), "```", "",
                  "mean KL over all layers but the last (nats): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in means.items()), "",
                  "| target | met | figures |", "|---|---|---|"]
        lines += target_rows(checks) + [""]
        print("\n".join(lines[-8:]), flush=True)
        del model
    write_report(args.out, "tuned_heldout", lines, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
