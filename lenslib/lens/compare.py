"""Several models on one prompt, lined up by relative depth: the cross-model logit lens.

>>> import lenslib
>>> tiny = lenslib.load_model("tiny-llama")
>>> comparison = lenslib.compare({"a": tiny, "b": lenslib.load_model("tiny-llama")}, "abc", target="d")
>>> comparison.model_names, comparison.relative_depth("a")      # 0 = embeddings, 1 = output
(['a', 'b'], [0.0, 0.5, 1.0])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Optional, Sequence, Union

from lenslib.core.bridge import model_name
from lenslib.core.tokens import Token
from lenslib.errors import InputError
from lenslib.lens.logit_lens import logit_lens
from lenslib.lens.result import LensResult

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

Models = Union[Mapping[str, Union[str, "TransformerBridge"]], Sequence[Union[str, "TransformerBridge"]]]


@dataclass
class Comparison:
    """One :class:`LensResult` per model, each at the prompt's last position.

    Attributes:
        results: model name -> its lens of the prompt (``positions="last"``).
        prompt: the text every model ran (each with its own tokenizer).
        target_label: what was tracked: the given target, or each model's own final top-1.
    """

    results: dict[str, LensResult]
    prompt: str
    target_label: str

    @property
    def model_names(self) -> list[str]:
        return list(self.results)

    @property
    def model_name(self) -> str:
        """The models compared, joined by ``" vs "``."""
        return " vs ".join(self.results)

    def layer_labels(self, name: str) -> list[str]:
        """One model's layer labels (models differ in depth)."""
        return self.results[name].layer_labels

    def relative_depth(self, name: str) -> list[float]:
        """Per layer of model ``name``: ``index / (n_layers - 1)``, 0 = embeddings, 1 = its output."""
        n = self.results[name].n_layers
        return [i / max(1, n - 1) for i in range(n)]

    def to_frame(self):
        """A tidy ``pandas.DataFrame``: one row per model x layer (``model``, ``layer``,
        ``layer_label``, ``relative_depth``, ``target_token``, ``target_prob``, ``target_rank``,
        ``entropy`` and ``kl_to_final`` in nats, ``top1_token``)."""
        import pandas as pd

        rows = []
        for name, r in self.results.items():
            for i, (label, depth) in enumerate(zip(r.layer_labels, self.relative_depth(name))):
                rows.append({"model": name, "layer": i, "layer_label": label, "relative_depth": depth,
                             "target_token": r.target_tokens[0], "target_prob": float(r.target_prob[i, 0]),
                             "target_rank": int(r.target_rank[i, 0]), "entropy": float(r.entropy[i, 0]),
                             "kl_to_final": float(r.kl_to_final[i, 0]), "top1_token": r.top_tokens[i][0][0]})
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        """The prompt, the target and every model's result as plain values, for JSON."""
        return {"prompt": self.prompt, "target_label": self.target_label,
                "results": {name: r.to_dict() for name, r in self.results.items()}}

    def __str__(self) -> str:
        lines = [f"{self.prompt!r}, tracking {self.target_label}:"]
        for name, r in self.results.items():
            ranks = r.target_rank[:, 0].tolist()
            first = next((i for i in range(len(ranks)) if all(x == 1 for x in ranks[i:])), None)
            settled = f"top-1 from {r.layer_labels[first]}" if first is not None else "never top-1 to the end"
            lines.append(f"  {name}: target {r.target_tokens[0]!r}, final p = {float(r.target_prob[-1, 0]):.3f}, "
                         f"{settled} ({r.n_layers} layers); final top-1 {r.top_tokens[-1][0][0]!r}")
        return "\n".join(lines)


def compare(
    models: Models,
    prompt: str,
    *,
    target: Optional[Token] = None,
    k: int = 5,
    prepend_bos: Optional[bool] = None,
) -> Comparison:
    """Lens one prompt's last position on several models.

    Args:
        models: loaded models or names (``load_model`` loads a name), as a list or as a mapping
            from the label to show to the model; a list is labelled by each model's name.
        prompt: the text, tokenized by each model's own tokenizer.
        target: a token string to track in every model (``" Paris"``; it may be several tokens
            for some tokenizers, then its joint log-probability is tracked). ``None``: each
            model's own final top-1 token, so each curve shows when the model settles on what
            it finally predicts.
        k: top tokens kept per layer.
        prepend_bos: as in :func:`lenslib.logit_lens`.

    Returns:
        A :class:`Comparison`; plot it with :func:`lenslib.plotting.cross_model_trajectories`
        and :func:`lenslib.plotting.stat_profile` (they take ``comparison.results``).

    Raises:
        InputError: fewer than two models, two with the same label, or an integer target (token
            ids differ between tokenizers).
    """
    from lenslib.models.loading import load_model

    named = dict(models) if isinstance(models, Mapping) else {
        (m if isinstance(m, str) else model_name(m)): m for m in models}
    count = len(models)
    if count < 2 or len(named) < count:
        raise InputError(f"compare needs at least two models with distinct names; got {list(named) or count}")
    if target is not None and not isinstance(target, str):
        raise InputError("compare tracks a token by its text (e.g. ' Paris'): ids differ between tokenizers")
    results = {}
    for label, model in named.items():
        model = load_model(model) if isinstance(model, str) else model
        wanted = target
        if wanted is None:  # the model's own final prediction
            wanted = int(logit_lens(model, prompt, positions="last", k=1, prepend_bos=prepend_bos).top_ids[-1, 0, 0])
        results[label] = logit_lens(model, prompt, positions="last", target=wanted, k=k, prepend_bos=prepend_bos)
    label = repr(target) if target is not None else "each model's final top-1 token"
    return Comparison(results=results, prompt=prompt, target_label=label)
