"""Who is right where lenslib and TransformerLens's own lens disagree: both against float64.

The benchmark (``lens_bench.py``) compares lenslib's lens (case a) with TransformerLens's
``tools.analysis.logit_lens`` (cases g, g_t) in fp32 and counts disagreements: entropy more than
1e-4 nats apart, target ranks that differ. This script takes the first ``--positions`` positions
of the same passage and measures each lens's error against a float64 reference computed from
Hugging Face alone (the model cast to float64: hidden states -> final norm -> lm_head, then the
statistics in float64), so a disagreement can be attributed. lenslib runs through both forward
paths (SDPA and the bridge's), to separate the forward pass from the read-out.

    python bench/tl_agreement.py --model gemma-3-270m --positions 32

Writes ``tl_agreement.json`` and ``tl_agreement.md`` into ``--out`` (default ``bench/``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from bench.cases import TOP_K, case_tl_targets, case_tl_top_k  # noqa: E402


@torch.no_grad()
def float64_reference(name: str, tokens: torch.Tensor) -> dict:
    """``[layer, pos]`` entropy (nats) and 0-based next-token rank, and ``[layer, pos]`` top-1, in
    float64 from Hugging Face's own model cast to float64."""
    from transformers import AutoModelForCausalLM

    import lenslib

    if name == "tiny-llama":
        from lenslib.models.random_weights import tiny_hf_model

        hf = tiny_hf_model(seed=0)[0]
    else:
        hf = AutoModelForCausalLM.from_pretrained(lenslib.models.loading.hf_model_dir(name), attn_implementation="eager")
    hf = hf.double().eval()
    out = hf(tokens, output_hidden_states=True)
    hidden = list(out.hidden_states)
    # transformers returns the last hidden state after the final norm: decode it as it is
    logits = [hf.lm_head(hf.model.norm(h[0])) for h in hidden[:-1]] + [hf.lm_head(hidden[-1][0])]
    stacked = torch.stack(logits)  # [layer, pos, d_vocab] float64
    cap = getattr(hf.config, "final_logit_softcapping", None)
    if cap:
        stacked = torch.tanh(stacked / cap) * cap
    assert torch.allclose(stacked[-1], out.logits[0].double(), atol=1e-8), "final layer is not the model's logits"
    log_probs = stacked.log_softmax(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    following = tokens[0, 1:]
    target_logit = stacked[:, :-1].gather(-1, following.view(1, -1, 1).expand(stacked.shape[0], -1, 1))
    rank = (stacked[:, :-1] > target_logit).sum(-1)  # 0-based, ties not counted
    return {"entropy": entropy, "rank": rank, "top1": stacked.argmax(-1)}


def errors(name: str, entropy, rank, top1, ref: dict) -> dict:
    diff = (entropy.double() - ref["entropy"]).abs()
    return {
        "lens": name,
        "entropy_max_abs_err_nats": float(diff.max()),
        "entropy_median_abs_err_nats": float(diff.median()),
        "entropy_err_over_1e-4": int((diff > 1e-4).sum()),
        "rank_differs_from_float64": int((rank != ref["rank"]).sum()),
        "rank_max_abs_diff": int((rank - ref["rank"]).abs().max()),
        "top1_differs_from_float64": int((top1 != ref["top1"]).sum()),
    }


def main(argv=None) -> dict:
    import lenslib
    from bench.lens_bench import PASSAGE, prompt_of_length

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--positions", type=int, default=32, help="prompt length in tokens, BOS included")
    parser.add_argument("--out", default=str(HERE))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = lenslib.load_model(args.model, device="cpu")
    prompt, tokens, _ = prompt_of_length(model, PASSAGE.read_text(encoding="utf-8").strip(), args.positions)
    ref = float64_reference(args.model, tokens)
    rows = []
    for forward in ("sdpa", "bridge"):
        lens = lenslib.logit_lens(model, prompt, k=TOP_K, forward=forward)
        rows.append(errors(f"lenslib (forward={forward})", lens.entropy, lens.target_rank[:, :-1] - 1,
                           lens.top_ids[..., 0], ref))
    top, targets = case_tl_top_k(model, tokens), case_tl_targets(model, tokens)
    rows.append(errors("TransformerLens tools.analysis.logit_lens", top.readout.entropy[:, 0],
                       targets.readout.target_ranks[:, 0, :-1, 0], top.readout.top_ids[:, 0, :, 0], ref))
    report = {"model": args.model, "tokens": args.positions, "layers": int(ref["entropy"].shape[0]),
              "ranks_compared": int(ref["rank"].numel()), "torch_threads": torch.get_num_threads(),
              "errors_against_float64": rows}
    out = Path(args.out)
    (out / "tl_agreement.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    lines = [
        f"# lenslib and TransformerLens's lens against float64 ({args.model}, {args.positions} tokens)",
        "",
        f"Reference: Hugging Face's model cast to float64 (hidden states -> final norm -> lm_head), "
        f"statistics in float64; {report['layers']} layers x {args.positions} positions, "
        f"{report['ranks_compared']} next-token ranks (0-based, ties not counted). Both lenses in fp32.",
        "",
        "| lens | entropy max err (nats) | median err | cells > 1e-4 nats | ranks != float64 | max rank diff | top-1 != float64 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['lens']} | {r['entropy_max_abs_err_nats']:.2g} | {r['entropy_median_abs_err_nats']:.2g} | "
            f"{r['entropy_err_over_1e-4']} | {r['rank_differs_from_float64']} | {r['rank_max_abs_diff']} | "
            f"{r['top1_differs_from_float64']} |"
        )
    (out / "tl_agreement.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
