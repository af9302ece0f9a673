"""A tuned lens's quality card: its held-out scores as a table and as text.

Reads ``lens.record`` (written by :mod:`lenslib.tuned.cache`): per layer, the full-vocabulary
held-out KL(final || lens) in nats, top-1 agreement with the final layer and cross-entropy to
the next token, for the logit lens, the least-squares start and the tuned lens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lenslib.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

    from lenslib.tuned.translators import TunedLens

LENS_NAMES = {"logit": "logit lens", "least_squares": "least-squares start", "tuned": "tuned lens"}


def heldout_frame(lens: "TunedLens") -> "pd.DataFrame":
    """The record's held-out scores: one row per lens x layer (see :class:`LensEvaluation`).

    Raises:
        ValueError: the lens carries no held-out scores (e.g. made by hand or imported).
    """
    import pandas as pd

    rows = lens.record.get("heldout")
    if not rows:
        raise InputError("this lens has no held-out scores in its record; score it with "
                         "lenslib.tuned.evaluate.evaluate_lens")
    return pd.DataFrame.from_records(rows)


def side_by_side(frame: "pd.DataFrame") -> "pd.DataFrame":
    """``[layer]`` rows, KL and top-1 agreement columns for each lens, side by side."""
    wide = frame.pivot(index=["layer", "label"], columns="lens", values=["kl_nats", "top1_agreement"])
    order = [n for n in LENS_NAMES if n in frame.lens.unique()]
    wide = wide.reindex(columns=[(s, n) for s in ("kl_nats", "top1_agreement") for n in order])
    wide.columns = [f"{'KL' if s == 'kl_nats' else 'top1'} {n}" for s, n in wide.columns]
    return wide.reset_index()


def fit_table(lens: "TunedLens") -> str:
    """Plain-text report: provenance, fit times, per-layer table and the means over layers."""
    record = lens.record
    frame = heldout_frame(lens)
    corpus = record.get("corpus", {})
    fit = record.get("fit", {})
    seconds = fit.get("seconds", {})
    means = record.get("heldout_mean_kl_nats_but_last", {})
    lines = [
        f"tuned lens of {record.get('model', lens.signature['model_name'])}: "
        f"{len(lens.labels)} translators of {lens.signature['d_model']}x{lens.signature['d_model']}",
        f"fitted on {fit.get('fit_tokens')} tokens of {corpus.get('source')} (licence: {corpus.get('licence')})",
        f"held out: {corpus.get('split')}; scored on {corpus.get('heldout_tokens_scored')} tokens, full vocabulary",
        "fit seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()),
        *_choice_lines(fit),
        "",
        side_by_side(frame).to_string(index=False, float_format=lambda x: f"{x:.3f}"),
        "",
        "mean KL over all layers but the last (nats): "
        + ", ".join(f"{LENS_NAMES[k]} {v:.3f}" for k, v in means.items()),
    ]
    return "\n".join(lines)


def _choice_lines(fit: dict) -> list[str]:
    """The per-layer selection, if the fit made one: which translator each layer kept."""
    choice = fit.get("choice")
    if not choice:
        return []
    counts = {name: choice.count(name) for name in dict.fromkeys(choice)}
    kept = [f"{name} at {n} layer{'s' if n != 1 else ''}" for name, n in counts.items()]
    lines = [f"per-layer selection on {fit.get('select_tokens')} validation tokens (fitting split, not fitted on): "
             + ", ".join(kept)]
    others = [f"{i}: {name}" for i, name in enumerate(choice) if name != "refined"]
    if others:
        lines.append("layers not keeping the refined map: " + ", ".join(others))
    return lines


