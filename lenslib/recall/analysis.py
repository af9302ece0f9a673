"""Factual recall through the logit lens: at which layer does the answer become the prediction?

For each prompt only the last position is lensed, with the item's answer as the target, so a
run over hundreds of prompts costs one batched forward pass per ``batch_size`` prompts. An answer
of several tokens (for this model's tokenizer) is tracked as its joint probability, with the
answer teacher-forced (:mod:`lenslib.lens.answers`), so no prompt is dropped.

>>> import lenslib
>>> from lenslib.recall.analysis import emergence_layer, run_recall
>>> from lenslib.recall.dataset import RecallItem
>>> emergence_layer([9, 1, 4, 1, 1])   # top-1 from layer 3 on; the dip at layer 2 resets it
3
>>> model = lenslib.load_model("tiny-llama")
>>> run = run_recall(model, [RecallItem("letters", "ab", "ab", "c")], progress=False)
>>> run.ranks.shape                     # [prompt, layer]: embeddings, input of block 1, output
torch.Size([1, 3])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lenslib.core.tokens import tokenize
from lenslib.errors import InputError
from lenslib.lens.answers import joint_lens
from lenslib.recall.dataset import RecallItem, answer_token_ids

if TYPE_CHECKING:
    import pandas as pd
    from transformer_lens.model_bridge import TransformerBridge


@dataclass
class RecallRun:
    """The lens of many recall prompts at their last position, the answer as target.

    ``layer`` runs over ``layer_labels`` (``"0_pre"`` = the embeddings, ... ``"final_post"`` =
    the model's own prediction), so layer index ``i`` is the stream entering block ``i``.

    Attributes:
        items: the items run, in order.
        table: one row per prompt: ``relation``, ``subject``, ``prompt``, ``answer``,
            ``answer_tokens`` (how many tokens the answer is for this model),
            ``final_rank`` (the answer's rank at the final layer, 1 = top), ``final_prob``,
            ``correct`` (top-1 at the final layer), ``emergence_layer`` (see
            :func:`emergence_layer`; ``<NA>`` when not correct), ``final_top1`` (the model's own
            top-1 token string) and ``final_top1_prob``.
        ranks: ``[prompt, layer]`` the answer's rank at each layer, 1 = top-1. An answer of
            several tokens is teacher-forced (see :mod:`lenslib.lens.answers`): its rank is the worst
            of its tokens' ranks, so 1 means greedy decoding through that layer gives the answer.
        probs: ``[prompt, layer]`` the answer's probability at each layer (joint, for an answer
            of several tokens).
        layer_labels: one label per layer.
        model_name: the model's name, when it has one.
    """

    items: list[RecallItem]
    table: "pd.DataFrame"
    ranks: Int[Tensor, "prompt layer"]
    probs: Float[Tensor, "prompt layer"]
    layer_labels: list[str]
    model_name: str = ""

    @property
    def n_layers(self) -> int:
        """Number of lens layers (``len(layer_labels)``)."""
        return len(self.layer_labels)

    def to_frame(self) -> "pd.DataFrame":
        """The per-prompt table (a copy of ``table``)."""
        return self.table.copy()

    def to_dict(self) -> dict:
        """The summary (accuracy, emergence, per relation) and every prompt's row, for JSON."""
        summary, _ = recall_summary(self)
        prompts = self.table.astype(object).where(self.table.notna(), None).to_dict("records")
        return {**summary, "prompts": prompts, "ranks": self.ranks.tolist(), "probs": self.probs.tolist()}

    def __str__(self) -> str:
        summary, by_relation = recall_summary(self)
        median = summary["median_emergence_layer"]
        head = (f"recall{f' of {self.model_name}' if self.model_name else ''}: {summary['n_prompts']} prompts, "
                f"{summary['accuracy']:.1%} top-1 at the final layer; median emergence layer "
                f"{'-' if median is None else f'{median:g}'} of {self.n_layers} ({self.layer_labels[-1]} = output)")
        columns = ["relation", "n", "accuracy", "median_layer"]
        return head + "\n" + by_relation[columns].to_string(index=False, float_format=lambda x: f"{x:.2f}")


def emergence_layer(rank_trajectory: Sequence[int] | Tensor) -> Optional[int]:
    """The first layer from which the answer stays top-1 through the final layer.

    Args:
        rank_trajectory: ``[layer]`` the answer's rank per layer, 1 = top-1, last = final layer.

    Returns:
        The index ``i`` such that ``rank[i:]`` are all 1 and ``rank[i - 1]`` is not (0 when it
        is top-1 from the embeddings on); ``None`` when it is not top-1 at the final layer.
        A layer that is top-1 and then loses it does not count: ``[1, 3, 1, 1]`` gives 2.
    """
    ranks = [int(r) for r in rank_trajectory]
    if not ranks:
        raise InputError("rank_trajectory is empty: give one rank per layer")
    if ranks[-1] != 1:
        return None
    start = len(ranks) - 1
    while start > 0 and ranks[start - 1] == 1:
        start -= 1
    return start


@torch.no_grad()
def run_recall(
    model: "TransformerBridge",
    items: Sequence[RecallItem],
    *,
    batch_size: int = 16,
    progress: bool = True,
    lens=None,
) -> RecallRun:
    """Lens every item's prompt at its last position, tracking the item's answer token.

    Example:
        >>> import lenslib
        >>> model = lenslib.load_model("tiny-llama")
        >>> items = [lenslib.RecallItem("letters", "a", "abc", "d"), lenslib.RecallItem("letters", "b", "xy", "z")]
        >>> run = lenslib.run_recall(model, items, progress=False)
        >>> run.ranks.shape                          # [prompt, layer]: the answer's rank at each layer
        torch.Size([2, 3])

    Each layer is decoded as in :func:`lenslib.logit_lens` (final norm recomputed per layer,
    unembedding, the model's own logit transform), keeping only the answer's rank and
    probability and the top-1 token.

    Args:
        model: a ``TransformerBridge`` (see :func:`lenslib.load_model`).
        items: recall items (see :func:`lenslib.recall.dataset.load_recall_dataset`). An answer of
            several tokens for this model is tracked jointly (see ``ranks`` and ``probs``);
            :func:`lenslib.recall.dataset.single_token_items` keeps only the one-token ones.
        batch_size: prompts per forward pass.
        progress: show a tqdm bar over batches.
        lens: a :class:`lenslib.tuned.translators.TunedLens` to decode through (None: the logit lens).

    Returns:
        A :class:`RecallRun` with ``ranks`` and ``probs`` of shape ``[prompt, layer]``.

    Raises:
        ValueError: no items, or an answer that tokenizes to nothing.
    """
    from tqdm.auto import tqdm

    items = list(items)
    if not items:
        raise InputError("no items to run: give at least one RecallItem")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    answers = answer_token_ids(items, model)

    results = []
    starts = range(0, len(items), batch_size)
    for start in tqdm(starts, desc="recall", unit="batch", disable=not progress):
        batch = items[start : start + batch_size]
        results += joint_lens(
            model,
            [tokenize(model, item.prompt) for item in batch],
            answers[start : start + batch_size],
            labels=[item.answer for item in batch],
            k=1,
            batch_size=len(batch),  # this loop is the only batching: one forward per batch
            lens=lens,
        )
    ranks = torch.stack([r.target_rank[:, 0] for r in results])
    probs = torch.stack([r.target_prob[:, 0] for r in results])
    top1 = [r.top_tokens[-1][0][0] for r in results]
    top1_prob = [float(r.top_probs[-1, 0, 0]) for r in results]
    table = _per_prompt_table(items, ranks, probs, top1, top1_prob)
    table.insert(4, "answer_tokens", [len(ids) for ids in answers])
    return RecallRun(
        items=items,
        table=table,
        ranks=ranks,
        probs=probs,
        layer_labels=list(results[0].layer_labels),
        model_name=results[0].model_name,
    )


def _per_prompt_table(items, ranks, probs, top1, top1_prob) -> "pd.DataFrame":
    import pandas as pd

    emergence = [emergence_layer(row) for row in ranks.tolist()]
    return pd.DataFrame(
        {
            "relation": [item.relation for item in items],
            "subject": [item.subject for item in items],
            "prompt": [item.prompt for item in items],
            "answer": [item.answer for item in items],
            "final_rank": ranks[:, -1].numpy(),
            "final_prob": probs[:, -1].numpy(),
            "correct": (ranks[:, -1] == 1).numpy(),
            "emergence_layer": pd.array(emergence, dtype="Int64"),
            "final_top1": top1,
            "final_top1_prob": top1_prob,
        }
    )


def accuracy_by_relation(run: RecallRun) -> "pd.DataFrame":
    """Final-layer top-1 accuracy per relation, with an ``"all"`` row last.

    Returns:
        Indexed by relation; columns ``n`` (prompts), ``n_correct``, ``accuracy`` (fraction
        top-1 at the final layer), ``mean_prob`` (the answer's mean final probability) and
        ``median_rank`` (its median final rank).
    """
    import pandas as pd

    def summary(frame):
        return pd.Series(
            {
                "n": len(frame),
                "n_correct": int(frame["correct"].sum()),
                "accuracy": float(frame["correct"].mean()),
                "mean_prob": float(frame["final_prob"].mean()),
                "median_rank": float(frame["final_rank"].median()),
            }
        )

    table = run.table
    rows = {relation: summary(frame) for relation, frame in table.groupby("relation", sort=False)}
    rows["all"] = summary(table)
    out = pd.DataFrame(rows).T
    out.index.name = "relation"
    return out.astype({"n": int, "n_correct": int})


def emergence_by_relation(run: RecallRun) -> "pd.DataFrame":
    """When the answer becomes (and stays) top-1, per relation, over the correct prompts only.

    Returns:
        Indexed by relation, with an ``"all"`` row last; columns ``n_correct``,
        ``median_layer``, ``mean_layer``, ``earliest`` and ``latest`` (layer indices into
        ``run.layer_labels``), and ``median_depth`` (``median_layer / (n_layers - 1)``: 0 = the
        embeddings, 1 = the final layer, comparable across models). NaN where no prompt of the
        relation is correct.
    """
    import pandas as pd

    last = max(run.n_layers - 1, 1)

    def summary(frame):
        layers = frame["emergence_layer"].dropna().astype(float)
        empty = layers.empty
        return pd.Series(
            {
                "n_correct": len(layers),
                "median_layer": float("nan") if empty else float(layers.median()),
                "mean_layer": float("nan") if empty else float(layers.mean()),
                "earliest": float("nan") if empty else float(layers.min()),
                "latest": float("nan") if empty else float(layers.max()),
                "median_depth": float("nan") if empty else float(layers.median()) / last,
            }
        )

    table = run.table
    rows = {relation: summary(frame) for relation, frame in table.groupby("relation", sort=False)}
    rows["all"] = summary(table)
    out = pd.DataFrame(rows).T
    out.index.name = "relation"
    return out.astype({"n_correct": int})


def recall_summary(run: "RecallRun") -> tuple[dict, "pd.DataFrame"]:
    """Overall numbers as a dict, and one row per relation (accuracy, emergence)."""
    emergence = emergence_by_relation(run).drop(columns="n_correct")
    by_relation = accuracy_by_relation(run).join(emergence).reset_index()
    emergence = run.table["emergence_layer"].dropna()
    summary = {
        "model": run.model_name,
        "n_prompts": len(run.table),
        "accuracy": float(run.table["correct"].mean()),
        "median_emergence_layer": float(emergence.median()) if len(emergence) else None,
        "n_layers": run.n_layers,
        "layer_labels": run.layer_labels,
        "by_relation": [
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in by_relation.to_dict("records")
        ],
    }
    return summary, by_relation
