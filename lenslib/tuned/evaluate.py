"""Scoring lenses on held-out text over the full vocabulary, through the tiled statistics.

For every lens layer, over every held-out token (BOS excluded): the mean KL(final || lens) in
nats and bits, the top-1 agreement with the final layer, and the cross-entropy of the lens's
distribution to the actual next token (nats). Several lenses are scored in one pass: their
normalised rows are stacked and decoded together by :func:`lenslib.core.stats.lens_stats`
(tiles of ``chunk_bytes``; no ``[tokens, d_vocab]`` logits are ever held).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Optional, Sequence, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lenslib.core.bridge import model_name, output_transform
from lenslib.core.stats import DEFAULT_CHUNK_BYTES, lens_stats
from lenslib.errors import InputError
from lenslib.tuned.residuals import Residuals, collect_residuals, final_norm
from lenslib.tuned.translators import TunedLens

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class LensEvaluation:
    """Per-layer held-out scores of one or more lenses.

    Attributes:
        table: a ``pandas.DataFrame`` with one row per lens x layer: ``lens``, ``layer``
            (index into ``accumulated_resid``), ``label``, ``kl_nats``, ``kl_bits``,
            ``top1_agreement`` (fraction of tokens whose top-1 equals the final layer's),
            ``cross_entropy_nats`` (to the actual next token), ``n_tokens``.
        n_tokens: held-out tokens scored (BOS excluded).
        layer_labels: the ``accumulated_resid`` labels scored, in order.
        model_name: the model's name.
        token_kl: ``[lens, layer, token]`` KL(final || lens) of every token (nats), in the
            order of ``lens_names``: what the bootstrap resamples.
        text_ids: ``[token]`` the text each token comes from (``None`` when unknown).
    """

    table: "pd.DataFrame"
    n_tokens: int
    layer_labels: list[str] = field(default_factory=list)
    model_name: str = ""
    token_kl: Optional[Float[Tensor, "lens layer token"]] = field(default=None, repr=False)
    text_ids: Optional[Int[Tensor, "token"]] = field(default=None, repr=False)

    @property
    def lens_names(self) -> list[str]:
        """The lenses scored, in order (e.g. ``["logit", "tuned"]``)."""
        return list(dict.fromkeys(self.table.lens))

    def bootstrap_kl(
        self, lens: str, versus: Optional[str] = None, *, n_resamples: int = 1000, level: float = 0.95, seed: int = 0,
    ) -> "pd.DataFrame":
        """Per layer, the mean KL of ``lens`` (minus that of ``versus``) with a bootstrap
        interval over **texts**: the texts are drawn with replacement ``n_resamples`` times and
        the token-weighted mean recomputed, so tokens of one text stay together.

        Example:
            >>> import lenslib
            >>> model = lenslib.load_model("tiny-llama")
            >>> texts = ["hello there", "abc def ghi", "a quiet engine", "seven umbrellas"]
            >>> scores = lenslib.evaluate_lens(model, {"logit": None, "same": lenslib.TunedLens.identity(model)}, texts, progress=False)
            >>> gap = scores.bootstrap_kl("same", versus="logit")     # identical lenses: a zero difference
            >>> float(gap.low.abs().max()), float(gap.high.abs().max())
            (0.0, 0.0)

        Args:
            lens: a lens name of this evaluation.
            versus: another lens name: the difference ``lens - versus`` is resampled *paired*
                (the same texts for both), so a difference whose interval contains 0 is within
                the noise of this held-out text.
            n_resamples: bootstrap resamples.
            level: the interval's coverage (0.95: the 2.5th to 97.5th percentiles).
            seed: seed of a local generator (the global RNG is untouched).

        Returns:
            A ``pandas.DataFrame`` with one row per layer but the last (``layer``, ``label``,
            ``kl_nats`` the point estimate, ``low`` and ``high``), in nats.

        Raises:
            InputError: an unknown lens name, or an evaluation without per-token scores.
        """
        import pandas as pd

        kl = self._layer_token_kl(lens, versus)
        point, low, high = _bootstrap_text_means(kl, self.text_ids, n_resamples=n_resamples, level=level, seed=seed)
        return pd.DataFrame({"layer": range(kl.shape[0]), "label": self.layer_labels[:-1], "kl_nats": point.numpy(),
                             "low": low.numpy(), "high": high.numpy()})

    def bootstrap_mean_kl(
        self, lens: str, versus: Optional[str] = None, *, n_resamples: int = 1000, level: float = 0.95, seed: int = 0,
    ) -> dict[str, float]:
        """The mean KL over all layers but the last (:meth:`mean_kl`), of ``lens`` or of
        ``lens - versus``, with the same bootstrap over texts as :meth:`bootstrap_kl` (the same
        draws for the same ``seed``): each resample averages every layer on one set of texts.

        Example:
            >>> import math, lenslib
            >>> model = lenslib.load_model("tiny-llama")
            >>> texts = ["hello there", "abc def ghi", "a quiet engine", "seven umbrellas"]
            >>> scores = lenslib.evaluate_lens(model, {"logit": None, "same": lenslib.TunedLens.identity(model)}, texts, progress=False)
            >>> whole = scores.bootstrap_mean_kl("logit")
            >>> math.isclose(whole["kl_nats"], scores.mean_kl("logit"), rel_tol=1e-6), whole["low"] <= whole["kl_nats"] <= whole["high"]
            (True, True)
            >>> scores.bootstrap_mean_kl("same", versus="logit")
            {'kl_nats': 0.0, 'low': 0.0, 'high': 0.0}

        Returns:
            ``{"kl_nats", "low", "high"}`` in nats: the point estimate and the interval's ends.

        Raises:
            InputError: as :meth:`bootstrap_kl`.
        """
        kl = self._layer_token_kl(lens, versus).mean(0, keepdim=True)   # [1, token]: every layer but the last, averaged
        point, low, high = _bootstrap_text_means(kl, self.text_ids, n_resamples=n_resamples, level=level, seed=seed)
        return {"kl_nats": float(point[0]), "low": float(low[0]), "high": float(high[0])}

    def _layer_token_kl(self, lens: str, versus: Optional[str] = None) -> Float[Tensor, "layer token"]:
        """``[layer, token]`` KL(final || lens) of every token (minus ``versus``'s), float64, every
        layer but the last (the model's own output: 0 by definition). What the bootstraps resample.

        Raises:
            InputError: an unknown lens name, or an evaluation without per-token scores.
        """
        names = self.lens_names
        for name in (lens,) + (() if versus is None else (versus,)):
            if name not in names:
                raise InputError(f"no lens {name!r} in this evaluation; it has {names}")
        if self.token_kl is None or self.text_ids is None:
            raise InputError("this evaluation kept no per-token scores; run evaluate_lens on texts to get them")
        kl = self.token_kl[names.index(lens)].double()
        if versus is not None:
            kl = kl - self.token_kl[names.index(versus)].double()
        return kl[:-1]

    def to_frame(self) -> "pd.DataFrame":
        """The score table (a copy of ``table``)."""
        return self.table.copy()

    def to_dict(self) -> dict:
        """Every score as plain values, for JSON."""
        return {"model_name": self.model_name, "n_tokens": self.n_tokens, "layer_labels": self.layer_labels,
                "scores": self.table.to_dict(orient="records"),
                "mean_kl_nats_but_last": {name: self.mean_kl(name) for name in self.lens_names}}

    def __str__(self) -> str:
        means = ", ".join(f"{name} {self.mean_kl(name):.3f}" for name in self.lens_names)
        return (f"held-out scores{f' of {self.model_name}' if self.model_name else ''} on {self.n_tokens} tokens, "
                f"full vocabulary; mean KL(final || lens) over all layers but the last, nats: {means}")

    def mean_kl(self, lens: str, *, skip_last: bool = True) -> float:
        """Mean KL in nats over the layers of ``lens`` (all but ``"final_post"`` by default)."""
        rows = self.table[self.table.lens == lens]
        if skip_last:
            rows = rows[rows.label != "final_post"]
        return float(rows.kl_nats.mean())

    def column(self, lens: str, name: str) -> list[float]:
        """One column of ``table`` for one lens, layer by layer."""
        return self.table[self.table.lens == lens][name].tolist()


def _bootstrap_text_means(
    kl: Float[Tensor, "row token"], text_ids: Int[Tensor, "token"], *, n_resamples: int = 1000, level: float = 0.95,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per row, the token-weighted mean of ``kl`` and a bootstrap interval over **texts**: the
    texts (``text_ids``) are drawn with replacement ``n_resamples`` times, tokens of one text
    staying together, and the central ``level`` of the resampled means is the interval.

    Example:
        >>> import torch
        >>> kl = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 2.0, 2.0]])   # [row, token]
        >>> point, low, high = _bootstrap_text_means(kl, torch.tensor([0, 0, 1, 1]), n_resamples=200)
        >>> point.tolist(), low[1].item(), high[1].item()                      # a constant row has no spread
        ([2.0, 2.0], 2.0, 2.0)
        >>> 1.0 <= low[0].item() <= 2.0 <= high[0].item() <= 3.0
        True

    Returns:
        ``(point, low, high)``, each ``[row]`` float64, in the units of ``kl``.
    """
    kl = kl.double()
    texts, inverse = torch.unique(text_ids, return_inverse=True)
    sums = torch.zeros(kl.shape[0], len(texts), dtype=torch.float64).index_add_(1, inverse, kl)
    counts = torch.bincount(inverse, minlength=len(texts)).double()
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, len(texts), (n_resamples, len(texts)), generator=generator)
    weights = torch.zeros(n_resamples, len(texts), dtype=torch.float64)
    weights.scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))
    means = (weights @ sums.T) / (weights @ counts).unsqueeze(-1)      # [resample, row]
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64), dim=0)
    return sums.sum(-1) / counts.sum(), low, high


def translators_sha256(lens: TunedLens, digits: int = 12) -> str:
    """The first ``digits`` hex digits of the SHA-256 of a lens's translators (``A``, then ``b``,
    as little-endian float32 bytes): which fitted lens a set of scores describes.

    Example:
        >>> import lenslib
        >>> model = lenslib.load_model("tiny-llama")
        >>> zero, moved = lenslib.TunedLens.identity(model), lenslib.TunedLens.identity(model)
        >>> moved.b[0, 0] = 1.0
        >>> translators_sha256(zero) == translators_sha256(lenslib.TunedLens.identity(model)), translators_sha256(moved) == translators_sha256(zero)
        (True, False)
        >>> len(translators_sha256(zero))
        12
    """
    digest = hashlib.sha256()
    for tensor in (lens.A, lens.b):
        digest.update(tensor.detach().float().contiguous().cpu().numpy().astype("<f4").tobytes())
    return digest.hexdigest()[:digits]


@torch.no_grad()
def lens_rows(model, resid: Residuals, lens: Optional[TunedLens], tokens: slice) -> Tensor:
    """``[layer, token, d_model]`` normalised rows of one lens (``None``: the logit lens)."""
    raw = resid.raw[:, tokens]
    if lens is not None:
        lens.check_model(model)
        raw = lens.translate(raw, resid.labels)
    return torch.stack([final_norm(model, raw[i]) for i in range(raw.shape[0])])


@torch.no_grad()
def evaluate_lens(
    model,
    lenses: Union[TunedLens, None, Mapping[str, Optional[TunedLens]]],
    texts: Union[Sequence[str], Residuals],
    *,
    block_tokens: int = 512,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: bool = True,
) -> LensEvaluation:
    """Score lenses on held-out text, per layer, over the full vocabulary.

    Example:
        >>> import lenslib
        >>> model = lenslib.load_model("tiny-llama")
        >>> identity = lenslib.TunedLens.identity(model)        # zero translators: the logit lens
        >>> scores = lenslib.evaluate_lens(model, {"logit": None, "identity": identity}, ["hello there"], progress=False)
        >>> scores.mean_kl("logit") == scores.mean_kl("identity")
        True

    Args:
        model: a ``TransformerBridge``.
        lenses: a :class:`TunedLens`, ``None`` (the logit lens), or a mapping name -> either;
            a single lens is named ``"tuned"`` (``"logit"`` for None).
        texts: held-out texts (BOS is prepended and excluded), or :class:`Residuals` from them.
        block_tokens: tokens decoded per :func:`lens_stats` call.

    Returns:
        A :class:`LensEvaluation`; KL in nats (and bits), cross-entropy in nats.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    if not isinstance(lenses, Mapping):
        lenses = {"logit" if lenses is None else "tuned": lenses}
    resid = texts if isinstance(texts, Residuals) else collect_residuals(
        model, list(texts), progress=progress, desc="held-out residuals")
    n_layer = len(resid.labels)
    names = list(lenses)
    kl = torch.zeros(len(names), n_layer, dtype=torch.float64)
    agree = torch.zeros(len(names), n_layer, dtype=torch.float64)
    ce = torch.zeros(len(names), n_layer, dtype=torch.float64)
    token_kl = torch.zeros(len(names), n_layer, resid.n_tokens)
    n_ce = 0
    for start in tqdm(range(0, resid.n_tokens, block_tokens), desc="full-vocabulary scores",
                      unit="block", disable=not progress):
        span = slice(start, min(start + block_tokens, resid.n_tokens))
        rows = [lens_rows(model, resid, lenses[name], span)[:-1] for name in names]
        final = final_norm(model, resid.raw[-1, span]).unsqueeze(0)
        targets = resid.next_ids[span]
        stats = lens_stats(
            torch.cat(rows + [final]), model.W_U, getattr(model, "b_U", None), targets, k=1,
            output_transform=output_transform(model), chunk_bytes=chunk_bytes,
        )
        has_target = targets >= 0
        n_ce += int(has_target.sum())
        final_top = stats.top_ids[-1, :, 0]
        for j in range(len(names)):
            layers = slice(j * (n_layer - 1), (j + 1) * (n_layer - 1))
            kl[j, :-1] += stats.kl_to_final[layers].double().sum(-1)
            token_kl[j, :-1, span] = stats.kl_to_final[layers].float()
            agree[j, :-1] += (stats.top_ids[layers, :, 0] == final_top).double().sum(-1)
            ce[j, :-1] -= stats.target_logprob[layers][:, has_target].double().sum(-1)
            agree[j, -1] += final_top.numel()
            ce[j, -1] -= stats.target_logprob[-1, has_target].double().sum()
    n = resid.n_tokens
    records = []
    for j, name in enumerate(names):
        for layer, label in enumerate(resid.labels):
            records.append({
                "lens": name, "layer": layer, "label": label,
                "kl_nats": float(kl[j, layer] / n), "kl_bits": float(kl[j, layer] / n / torch.log(torch.tensor(2.0))),
                "top1_agreement": float(agree[j, layer] / n),
                "cross_entropy_nats": float(ce[j, layer] / max(1, n_ce)), "n_tokens": n,
            })
    return LensEvaluation(pd.DataFrame.from_records(records), n, list(resid.labels), model_name(model),
                          token_kl, resid.text_ids)
