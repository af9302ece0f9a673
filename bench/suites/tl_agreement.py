"""Suite ``tl-agreement``: who is right where lenslib and TransformerLens's own lens disagree, both
against float64.

The lens suite compares lenslib's lens (case a) with TransformerLens's
``tools.analysis.logit_lens`` (cases g, g_t) in fp32 and counts disagreements: entropy more than
1e-4 nats apart, target ranks that differ. This suite takes the first ``--tokens`` positions of
the same passage and measures each lens's error against a float64 reference computed from
Hugging Face alone (the model cast to float64: hidden states -> final norm -> lm_head, then the
statistics in float64), so a disagreement can be attributed. lenslib runs through both forward
paths (SDPA and the bridge's), to separate the forward pass from the read-out. Every case is
computed once (its time and memory are recorded too); the errors are the suite's own table.

    python -m bench tl-agreement --models gemma-3-270m --tokens 32

Writes ``tl_agreement.json`` and ``tl_agreement.md`` into ``--out`` (default ``bench/``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

import torch

from bench.passage import passage_text, prompt_of_length
from bench.suite import Case, Defaults, Row, Suite
from bench.suites.lens import TOP_K, case_tl_targets, case_tl_top_k

TL_LABEL = "TransformerLens tools.analysis.logit_lens"


@dataclass
class Context(Row):
    model: object = None
    prompt: str = ""
    tokens: Optional[torch.Tensor] = None  # [1, n_tokens], BOS included


@torch.no_grad()
def float64_reference(name: str, tokens: torch.Tensor) -> dict:
    """``[layer, pos]`` entropy (nats) and 0-based next-token rank, and ``[layer, pos]`` top-1, in
    float64 from Hugging Face's own model cast to float64."""
    from transformers import AutoModelForCausalLM

    from lenslib.models.loading import hf_model_dir

    if name == "tiny-llama":
        from lenslib.models.random_weights import tiny_hf_model

        hf = tiny_hf_model(seed=0)[0]
    else:
        hf = AutoModelForCausalLM.from_pretrained(hf_model_dir(name), attn_implementation="eager")
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
    """One lens's errors against the float64 reference: entropy (nats), ranks, top-1."""
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


def lenslib_lens(ctx: Context, forward: str):
    import lenslib

    return lambda: lenslib.logit_lens(ctx.model, ctx.prompt, k=TOP_K, forward=forward)


CASES = (
    Case("float64", "Hugging Face's model cast to float64: the reference", lambda c: lambda: float64_reference(
        c.name, c.tokens), reps=1, keep=True),
    Case("sdpa", "lenslib (forward=sdpa)", lambda c: lenslib_lens(c, "sdpa"), reps=1, keep=True),
    Case("bridge", "lenslib (forward=bridge)", lambda c: lenslib_lens(c, "bridge"), reps=1, keep=True),
    Case("tl", TL_LABEL + ", top-5 and targets passes",
         lambda c: lambda: (case_tl_top_k(c.model, c.tokens), case_tl_targets(c.model, c.tokens)), reps=1, keep=True),
)


def load(name: str, args: argparse.Namespace, report: dict):
    import lenslib

    return lenslib.load_model(name, device=args.device)


def context(model, name: str, n_tokens: int, args: argparse.Namespace, report: dict) -> Context:
    prompt, tokens, _ = prompt_of_length(model, passage_text(), n_tokens)
    return Context(name=name, n_tokens=n_tokens, model=model, prompt=prompt, tokens=tokens)


def after_row(ctx: Context, entries: dict, kept: dict, report: dict) -> None:
    ref = kept.get("float64")
    if ref is None:
        return
    found = []
    for key in ("sdpa", "bridge"):
        if key in kept:
            lens = kept[key]
            found.append(errors(entries[key]["label"], lens.entropy, lens.target_rank[:, :-1] - 1,
                                lens.top_ids[..., 0], ref))
    if "tl" in kept:
        top, targets = kept["tl"]
        found.append(errors(TL_LABEL, top.readout.entropy[:, 0], targets.readout.target_ranks[:, 0, :-1, 0],
                            top.readout.top_ids[:, 0, :, 0], ref))
    report["errors_against_float64"].append({
        "model": ctx.name, "tokens": ctx.n_tokens, "layers": int(ref["entropy"].shape[0]),
        "ranks_compared": int(ref["rank"].numel()), "lenses": found})


def sections(report: dict) -> list[str]:
    lines = []
    for row in report["errors_against_float64"]:
        lines += [
            "", f"## {row['model']}, {row['tokens']} tokens", "",
            f"Reference: Hugging Face's model cast to float64 (hidden states -> final norm -> lm_head), "
            f"statistics in float64; {row['layers']} layers x {row['tokens']} positions, "
            f"{row['ranks_compared']} next-token ranks (0-based, ties not counted). Both lenses in fp32.",
            "",
            "| lens | entropy max err (nats) | median err | cells > 1e-4 nats | ranks != float64 | max rank diff | top-1 != float64 |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in row["lenses"]:
            lines.append(
                f"| {r['lens']} | {r['entropy_max_abs_err_nats']:.2g} | {r['entropy_median_abs_err_nats']:.2g} | "
                f"{r['entropy_err_over_1e-4']} | {r['rank_differs_from_float64']} | {r['rank_max_abs_diff']} | "
                f"{r['top1_differs_from_float64']} |"
            )
    return lines


SUITE = Suite(
    name="tl-agreement",
    title="lenslib and TransformerLens's lens against float64",
    about="Each lens's entropy, rank and top-1 errors against a float64 reference from Hugging Face alone.",
    stem="tl_agreement",
    tokens_mean="prompt length in tokens, BOS included",
    cases=CASES,
    load=load,
    context=context,
    defaults=Defaults(models=("gemma-3-270m",), tokens=(32,)),
    tiny=Defaults(models=("tiny-llama",), tokens=(20,)),
    prepare=lambda args: {"errors_against_float64": []},
    after_row=after_row,
    sections=sections,
    row_lists=("errors_against_float64",),
)
