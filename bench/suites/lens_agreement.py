"""Where lenslib's lens (case a of the lens suite) and TransformerLens's own lens (g, g_t) disagree."""

from __future__ import annotations

import torch


def agreement(lens, tl_top_k, tl_targets, tie_gap: float = 1e-5, entropy_tol: float = 2.5e-4) -> dict:
    """Where lenslib (case a) and TransformerLens's own lens (cases g, g_t) disagree.

    Top-1 is compared where lenslib's top two probabilities are more than ``tie_gap`` apart (else
    either order is right); entropy within ``entropy_tol`` nats; target ranks with
    TransformerLens's counted from 0, at every position that has a next token.

    The default ``entropy_tol`` is the worst-case float32 rounding of the two paths' entropies on the
    tiny model, where the tests hold them to it: each logit within eps = gamma_d max sum|x w|
    (3.5e-5), so each entropy within eps sum p|z - z_bar| + gamma_V (|lse| + sum p|z|) (1.1e-4),
    two paths 2.3e-4. On the real models it is a reporting threshold; the max difference is
    reported beside it.
    """
    top_tl = tl_top_k.readout.top_ids[:, 0].cpu()  # [layer, pos, k]
    probs = lens.top_probs
    untied = (probs[..., 0] - probs[..., 1]) > tie_gap
    top1_differ = (top_tl[..., 0] != lens.top_ids[..., 0]) & untied
    entropy_tl = tl_top_k.readout.entropy[:, 0].cpu().double()
    entropy_diff = (entropy_tl - lens.entropy.double()).abs()
    out = {
        "positions": int(lens.positions.numel()),
        "layers": len(lens.layer_labels),
        "top1_compared": int(untied.sum()),
        "top1_ties_skipped": int((~untied).sum()),
        "top1_disagree": int(top1_differ.sum()),
        "top1_disagree_where": where(top1_differ, lens.layer_labels),
        "entropy_max_abs_diff_nats": float(entropy_diff.max()),
        "entropy_over_tolerance": int((entropy_diff > entropy_tol).sum()),
        "entropy_tolerance_nats": entropy_tol,
        "tie_gap": tie_gap,
    }
    top_probs_tl = tl_top_k.readout.values[:, 0].cpu()
    out["top5_prob_max_abs_diff"] = float((top_probs_tl - probs).abs().max()) if torch.equal(
        tl_top_k.readout.top_ids[:, 0].cpu(), lens.top_ids) else None
    if tl_targets is not None:
        rank_tl = tl_targets.readout.target_ranks[:, 0, :, 0].cpu()[:, :-1]  # [layer, pos - 1]
        rank_lens = lens.target_rank[:, :-1] - 1
        differ = rank_tl != rank_lens
        prob_tl = tl_targets.readout.values[:, 0, :, 0].cpu()[:, :-1]
        out.update({
            "ranks_compared": int(differ.numel()),
            "rank_disagree": int(differ.sum()),
            "rank_disagree_where": where(differ, lens.layer_labels),
            "rank_max_abs_diff": int((rank_tl - rank_lens).abs().max()),
            "target_prob_max_abs_diff": float((prob_tl - lens.target_prob[:, :-1]).abs().max()),
        })
    return out


def where(mask: torch.Tensor, labels: list[str], limit: int = 5) -> list[str]:
    """The first ``limit`` cells of a ``[layer, pos]`` mask, as ``"LABEL pos P"``."""
    return [f"{labels[int(l)]} pos {int(p)}" for l, p in mask.nonzero()[:limit]]


def agreement_lines(rows: list[dict]) -> list[str]:
    """The Markdown section: one table row per model and length, then the disagreements found."""
    if not rows:
        return []
    lines = [
        "",
        "Agreement with TransformerLens's lens (case a against g and g_t, last repetition): "
        "top-1 where lenslib's top two probabilities are more than the tie gap apart, entropy "
        "within the tolerance, next-token ranks (TransformerLens's counted from 0).",
        "",
        "| model | tokens | top-1 compared | top-1 disagree | ties skipped | entropy max diff (nats) "
        "| entropy over tol. | ranks compared | ranks disagree | max rank diff | target prob max diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g in rows:
        prob = g.get("target_prob_max_abs_diff")
        lines.append(
            f"| {g['model']} | {g['tokens']} | {g['top1_compared']} | {g['top1_disagree']} | "
            f"{g['top1_ties_skipped']} | {g['entropy_max_abs_diff_nats']:.2g} | "
            f"{g['entropy_over_tolerance']} | {g.get('ranks_compared', '—')} | "
            f"{g.get('rank_disagree', '—')} | {g.get('rank_max_abs_diff', '—')} | "
            f"{'—' if prob is None else f'{prob:.2g}'} |"
        )
    found = [g for g in rows if g["top1_disagree"] or g["entropy_over_tolerance"] or g.get("rank_disagree")]
    lines.append("")
    lines.append("Disagreements (findings): " + ("; ".join(
        f"{g['model']} {g['tokens']}: top-1 at {g['top1_disagree_where']}, ranks at "
        f"{g.get('rank_disagree_where')}" for g in found) if found else "none."))
    return lines
