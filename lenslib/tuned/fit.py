"""Fitting a tuned lens on a CPU: least squares to the final stream, then KL refinement.

The recipe (:class:`lenslib.tuned.recipe.FitRecipe`):

1. **Residuals.** Run the model over the fitting texts once and keep every layer's raw
   residual stream (``accumulated_resid(apply_ln=False)``) at every real position but BOS,
   and, per position, the final distribution's log-normaliser and top tokens over the full
   vocabulary (computed in column tiles, never ``[tokens, d_vocab]`` at once).
2. **Least squares** (Din et al. 2023, https://arxiv.org/abs/2303.09435): per layer, the affine
   map from that layer's residual to the final residual, in float64, ridge-regularised towards
   the identity (``ridge`` x the mean eigenvalue of the layer's covariance).
3. **KL refinement.** Adam on KL(final || lens) for ``steps`` steps of ``batch_tokens`` random
   tokens, at ``lr`` per step, or ``late_lr`` for the layers from relative depth ``late_from``
   on (their start is already close to the final distribution). The softmax over the whole
   vocabulary is what costs, so each step's KL is taken over a truncated vocabulary: ``T`` = the union of the final distribution's ``top_k`` tokens in
   the batch, plus ``sample`` tokens drawn uniformly from the rest. The rest of the vocabulary
   is one bucket: its final-layer mass is exact (``1 - p(T)``, from the full log-normaliser);
   its lens mass and the lens's normaliser are estimated from the uniform sample (scaled by
   ``(d_vocab - |T|) / sample``). The loss is the KL between these ``|T| + 1``-way
   distributions. Batches come from ``refine_tokens`` of the fitting tokens (the final
   distribution's summary costs a full-vocabulary matmul per token). The loss and its gradient
   are written out in :mod:`lenslib.tuned.truncated`. Every score reported anywhere is over
   the full vocabulary (:mod:`lenslib.tuned.evaluate`).
4. **Per-layer selection.** On ``select_tokens`` tokens of validation text (fitting split, not
   fitted on), each layer keeps whichever of the identity (the logit lens), the least-squares
   map and the refined map has the lowest full-vocabulary KL. The truncated KL is an estimate
   and Adam's steps are noisy; where refinement makes a layer worse (with one step size for
   all layers it did so at Gemma 3's last layers, whose least-squares KL is about 0.2 nats),
   the layer keeps its better start.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from lenslib.core.bridge import output_transform
from lenslib.core.stats import lens_stats
from lenslib.errors import InputError, NotEnoughTextError
from lenslib.tuned.evaluate import evaluate_lens
from lenslib.tuned.recipe import FitRecipe
from lenslib.tuned.residuals import Residuals, collect_residuals, final_norm
from lenslib.tuned.translators import TunedLens, lens_labels, model_signature
from lenslib.tuned.truncated import draw_columns, final_log_probs, loss_and_row_gradient

MIN_FIT_TOKENS = 256  # below this, least squares in d_model dimensions is not worth a lens


@torch.no_grad()
def final_summary(model, final_raw: Tensor, top_k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per token: the final normalised stream, the full-vocabulary log-normaliser and top ids.

    The vocabulary is swept in tiles by :func:`lenslib.core.stats.lens_stats` (never
    ``[token, d_vocab]`` at once), which gives each row's top ids and probabilities; the
    log-normaliser follows from the top token's: ``lse = z_top - log p_top``.

    Returns:
        ``(normed [token, d_model], lse [token] nats, top [token, top_k] ids)``.
    """
    normed = torch.cat([final_norm(model, final_raw[i:i + 1024]) for i in range(0, final_raw.shape[0], 1024)])
    W_U, b_U, transform = model.W_U.detach(), _bias(model), output_transform(model)
    no_target = torch.full((normed.shape[0],), -1)
    stats = lens_stats(normed.unsqueeze(0), W_U, b_U, no_target, k=top_k, output_transform=transform)
    top = stats.top_ids[0]
    best = top[:, 0]
    z_top = (normed.double() * W_U.T[best].double()).sum(-1)
    if b_U is not None:
        z_top = z_top + b_U[best].double()
    if transform is not None:
        z_top = transform(z_top)
    return normed, (z_top - stats.top_probs[0, :, 0].double().log()).float(), top


def _bias(model) -> Optional[Tensor]:
    b_U = getattr(model, "b_U", None)
    return None if b_U is None else b_U.detach()


def bias_only_lens(model, resid: Residuals) -> TunedLens:
    """Per layer, the best *offset* alone: ``A = 0``, ``b = mean(final stream - layer stream)``.

    The least-squares translator with its linear part fixed at zero, a baseline for how much
    of the tuned lens's gain a learned offset gives by itself (Belrose et al. 2023 compare the
    same).

    Example:
        >>> import lenslib
        >>> from lenslib.tuned.fit import bias_only_lens
        >>> from lenslib.tuned.residuals import collect_residuals
        >>> model = lenslib.load_model("tiny-llama")
        >>> lens = bias_only_lens(model, collect_residuals(model, ["hello there"], progress=False))
        >>> bool((lens.A == 0).all()), tuple(lens.b.shape)      # [layer, d_model]
        (True, (2, 32))
    """
    labels = [l for l in resid.labels if l != "final_post"]
    final = resid.raw[-1].double()
    b = torch.stack([(final - resid.raw[i].double()).mean(0) for i in range(len(labels))]).float()
    d = int(model.cfg.d_model)
    return TunedLens(labels, torch.zeros(len(labels), d, d), b, model_signature(model))


def least_squares_lens(model, resid: Residuals, *, ridge: float = 1e-3, progress: bool = True) -> TunedLens:
    """Per layer, the ridge least-squares affine map to ``"final_post"`` (float64, centred).

    ``M = (Xc^T Xc + lam I)^-1 (Xc^T Yc + lam I)``, ``c = mean(Y) - mean(X) M``, with ``lam`` =
    ``ridge`` x the mean eigenvalue of ``Xc^T Xc``; the translator is ``A = M - I``, ``b = c``.
    """
    from tqdm.auto import tqdm

    sig = model_signature(model)
    labels = [l for l in resid.labels if l != "final_post"]
    d = sig["d_model"]
    Y = resid.raw[-1].double()
    y_mean = Y.mean(0)
    Yc = Y - y_mean
    eye = torch.eye(d, dtype=torch.float64)
    A, b = torch.zeros(len(labels), d, d), torch.zeros(len(labels), d)
    for i in tqdm(range(len(labels)), desc="least squares", unit="layer", disable=not progress):
        X = resid.raw[i].double()
        x_mean = X.mean(0)
        Xc = X - x_mean
        gram = Xc.T @ Xc
        lam = ridge * float(gram.diagonal().mean()) + 1e-12
        M = torch.linalg.solve(gram + lam * eye, Xc.T @ Yc + lam * eye)
        A[i] = (M - eye).float()
        b[i] = (y_mean - x_mean @ M).float()
    return TunedLens(labels, A, b, sig)


def refine(
    model, lens: TunedLens, resid: Residuals, *, steps: int, batch_tokens: int, lr: float,
    top_k: int, sample: int, seed: int, pool_tokens: Optional[int] = None,
    late_lr: Optional[float] = None, late_from: float = 1.0, progress: bool = True,
) -> tuple[TunedLens, list[float]]:
    """Adam on the truncated KL, starting from ``lens``; returns the new lens and the losses.

    Layers at relative depth ``>= late_from`` (``i / len(lens.labels)``) take ``late_lr``
    instead of ``lr``: their least-squares start is already close to the final distribution
    (Gemma 3's last layers: about 0.2 nats), and Adam's steps, of about ``lr`` per entry
    whatever the gradient's size, random-walk a good start away at ``lr``.

    Batches are drawn from ``pool_tokens`` tokens of ``resid`` picked at random (all of them if
    ``None`` or more than there are): the final distribution's normaliser and top tokens, which
    cost a full-vocabulary matmul per token, are computed for the pool only.
    """
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    n_pool = resid.n_tokens if pool_tokens is None else min(int(pool_tokens), resid.n_tokens)
    pool = torch.randperm(resid.n_tokens, generator=generator)[:n_pool].sort().values
    raw = resid.raw[:, pool]
    final_rows, final_lse, top = final_summary(model, raw[-1], top_k)
    d_vocab = int(model.W_U.shape[1])
    index = [resid.labels.index(l) for l in lens.labels]
    n = len(lens.labels)
    A = [lens.A[i].clone().requires_grad_(True) for i in range(n)]
    b = [lens.b[i].clone().requires_grad_(True) for i in range(n)]
    optimiser = torch.optim.Adam([
        {"params": [A[i], b[i]], "lr": lr if late_lr is None or i / n < late_from else late_lr}
        for i in range(n)
    ])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: 1 - s / max(1, steps))
    losses = []
    bar = tqdm(range(steps), desc="KL refinement", unit="step", disable=not progress)
    for _ in bar:
        pick = torch.randint(0, n_pool, (batch_tokens,), generator=generator)
        h = raw[:, pick][index]  # [layer, batch, d_model]
        y = h + torch.bmm(h, torch.stack(A)) + torch.stack(b).unsqueeze(1)
        normed = torch.stack([final_norm(model, y[i]) for i in range(y.shape[0])])
        draw = draw_columns(top[pick], d_vocab, sample, generator)
        log_p, p_rest = final_log_probs(model, final_rows[pick], final_lse[pick], draw)
        loss, row_grad = loss_and_row_gradient(model, normed.detach(), log_p, p_rest, draw)
        grads = torch.autograd.grad(normed, A + b, row_grad)
        for param, grad in zip(A + b, grads):
            param.grad = grad
        optimiser.step()
        schedule.step()
        losses.append(loss / len(index))
        bar.set_postfix(kl=f"{losses[-1]:.3f}")
    A, b = torch.stack(A).detach(), torch.stack(b).detach()
    return TunedLens(lens.labels, A, b, lens.signature), losses


def select_per_layer(
    model, candidates: dict, resid: Residuals, *, progress: bool = True,
) -> tuple[TunedLens, list[str], dict]:
    """Per layer, the candidate translator with the lowest full-vocabulary KL on ``resid``.

    Args:
        candidates: name -> :class:`TunedLens` over the same labels, or ``None`` for the
            identity (the logit lens).
        resid: validation residuals: text the candidates were not fitted on.

    Returns:
        ``(lens, choice, kl)``: the lens made of each layer's best translator, the name chosen
        per layer, and per name the validation KL (nats) per layer.
    """
    fitted = [lens for lens in candidates.values() if lens is not None]
    if not fitted:
        raise InputError("select_per_layer needs at least one fitted candidate besides the identity")
    labels, signature = fitted[0].labels, fitted[0].signature
    scores = evaluate_lens(model, candidates, resid, progress=progress)
    table = scores.table
    kl = {name: [float(table[(table.lens == name) & (table.label == label)].kl_nats.iloc[0]) for label in labels]
          for name in candidates}
    A, b = torch.zeros_like(fitted[0].A), torch.zeros_like(fitted[0].b)
    choice = []
    for i in range(len(labels)):
        best = min(candidates, key=lambda name: kl[name][i])
        choice.append(best)
        if candidates[best] is not None:
            A[i], b[i] = candidates[best].A[i], candidates[best].b[i]
    return TunedLens(list(labels), A, b, signature), choice, kl


@dataclass
class TunedLensFit:
    """What :func:`fit_tuned_lens` made: the tuned lens, its least-squares start, and how.

    Attributes:
        tuned: the fitted lens (per-layer choice applied when validation text was given).
        least_squares: the least-squares lens the refinement started from.
        recipe: the recipe used.
        layer_labels: the translated layers (``accumulated_resid`` labels).
        choice: per layer, ``"identity"``, ``"least_squares"`` or ``"refined"`` (all
            ``"refined"`` without validation text).
        selection_kl: per candidate, the validation KL (nats) per layer; empty without it.
        fit_tokens: tokens fitted on (BOS excluded).
        seconds: wall time of each phase (``residuals``, ``least_squares``, ``refinement``,
            ``selection``, ``total``).
        losses: the truncated KL per refinement step (nats, mean over layers).
        model_name: the model's name.
    """

    tuned: TunedLens
    least_squares: TunedLens
    recipe: FitRecipe
    layer_labels: list[str]
    choice: list[str]
    selection_kl: dict[str, list[float]]
    fit_tokens: int
    seconds: dict[str, float]
    losses: list[float] = field(repr=False)
    model_name: str = ""

    def to_frame(self):
        """A ``pandas.DataFrame``: one row per layer (``layer_label``, ``choice`` and the
        validation KL of each candidate, ``kl_{candidate}_nats``)."""
        import pandas as pd

        rows = []
        for i, label in enumerate(self.layer_labels):
            row = {"layer": i, "layer_label": label, "choice": self.choice[i]}
            row.update({f"kl_{name}_nats": kl[i] for name, kl in self.selection_kl.items()})
            rows.append(row)
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        """The fit's description for JSON (the lenses themselves: :meth:`TunedLens.save`)."""
        return {"model_name": self.model_name, "layer_labels": self.layer_labels, "choice": self.choice,
                "selection_kl": self.selection_kl, "fit_tokens": self.fit_tokens, "seconds": self.seconds,
                "losses": self.losses, "recipe": self.recipe.to_dict()}

    def __str__(self) -> str:
        counts = {name: self.choice.count(name) for name in dict.fromkeys(self.choice)}
        kept = ", ".join(f"{name} at {n}" for name, n in counts.items())
        loss = f"; truncated KL {self.losses[0]:.3f} -> {self.losses[-1]:.3f} nats" if self.losses else ""
        return (f"TunedLensFit of {self.model_name or 'a model'}: {len(self.layer_labels)} layers on "
                f"{self.fit_tokens} tokens in {self.seconds.get('total', 0.0):.1f} s{loss}; layers keep {kept}")


def fit_tuned_lens(
    model, texts: Sequence[str], *, recipe: Union[None, FitRecipe, Mapping] = None, progress: bool = True,
    resid: Optional[Residuals] = None, select_texts: Optional[Sequence[str]] = None,
) -> TunedLensFit:
    """Fit translators for every layer of ``model`` on ``texts``.

    Example:
        >>> import lenslib
        >>> model = lenslib.load_model("tiny-llama")
        >>> texts = ["the quick brown fox jumps over the lazy dog. " * 2] * 8
        >>> fit = lenslib.fit_tuned_lens(model, texts, recipe={"steps": 5, "sample": 16, "top_k": 4}, progress=False)
        >>> fit.layer_labels, fit.tuned.A.shape             # one d_model x d_model map per layer but the last
        (['0_pre', '1_pre'], torch.Size([2, 32, 32]))

    Args:
        model: a ``TransformerBridge``.
        texts: the fitting text (windows of a few hundred tokens each). Least squares uses all
            of it; the KL refinement draws its batches from ``recipe.refine_tokens`` of its
            tokens.
        recipe: a :class:`~lenslib.tuned.recipe.FitRecipe`, or a dict of overrides of the
            default one (``ridge``, ``steps``, ``batch_tokens``, ``lr``, ...).
        resid: residuals already collected from ``texts`` (skips the forward passes).
        select_texts: validation text, not in ``texts``. When given, each layer keeps whichever
            of the identity (the logit lens), the least-squares map and the refined map has the
            lowest full-vocabulary KL on it (:func:`select_per_layer`). When ``None``, every
            layer keeps the refined map.

    Returns:
        A :class:`TunedLensFit`; ``fit.tuned`` and ``fit.least_squares`` each carry
        ``record["fit"]`` (tokens, seconds, losses, recipe, choice) for their saved record.

    Raises:
        NotEnoughTextError: fewer than :data:`MIN_FIT_TOKENS` tokens (or fewer than
            ``d_model`` + 1, which least squares needs) after BOS.
    """
    recipe = FitRecipe.of(recipe)
    started = time.perf_counter()
    if resid is None:
        resid = collect_residuals(model, list(texts), incl_mid=recipe.incl_mid, progress=progress, desc="fit residuals")
    needed = max(MIN_FIT_TOKENS, int(model.cfg.d_model) + 1)
    if resid.n_tokens < needed:
        raise NotEnoughTextError(
            f"the fitting texts hold {resid.n_tokens} tokens after BOS; a tuned lens for "
            f"{model.cfg.model_name} needs at least {needed} (a good fit: about "
            f"{FitRecipe().fit_tokens}). Give more text."
        )
    collected = time.perf_counter()
    start = least_squares_lens(model, resid, ridge=recipe.ridge, progress=progress)
    solved = time.perf_counter()
    refined, losses = refine(
        model, start, resid, steps=recipe.steps, batch_tokens=recipe.batch_tokens,
        lr=recipe.lr, top_k=recipe.top_k, sample=recipe.sample, seed=recipe.seed,
        pool_tokens=recipe.refine_tokens, late_lr=recipe.late_lr, late_from=recipe.late_from,
        progress=progress,
    )
    refined_at = time.perf_counter()
    seconds = {"residuals": collected - started, "least_squares": solved - collected,
               "refinement": refined_at - solved}
    fit = {
        "fit_tokens": resid.n_tokens,
        "refine_tokens": min(int(recipe.refine_tokens or resid.n_tokens), resid.n_tokens),
        "seconds": seconds,
        "truncated_kl_first_last": [losses[0], losses[-1]] if losses else [],
        "recipe": recipe.to_dict(),
    }
    tuned, choice, kl = refined, ["refined"] * len(refined.labels), {}
    if select_texts:
        validation = collect_residuals(model, list(select_texts), incl_mid=recipe.incl_mid,
                                       progress=progress, desc="selection residuals")
        tuned, choice, kl = select_per_layer(
            model, {"identity": None, "least_squares": start, "refined": refined}, validation, progress=progress)
        fit.update(select_tokens=validation.n_tokens, choice=choice, selection_kl_nats=kl)
        seconds["selection"] = time.perf_counter() - refined_at
    seconds["total"] = time.perf_counter() - started
    stage = "least_squares + KL refinement" + (" + per-layer selection" if select_texts else "")
    start.record = {"fit": {**fit, "stage": "least_squares"}}
    tuned.record = {"fit": {**fit, "stage": stage}}
    return TunedLensFit(
        tuned=tuned, least_squares=start, recipe=recipe, layer_labels=list(tuned.labels), choice=list(choice),
        selection_kl=kl, fit_tokens=resid.n_tokens, seconds=seconds, losses=losses,
        model_name=str(getattr(model.cfg, "model_name", "")),
    )


def expected_labels(model, incl_mid: bool) -> list[str]:
    """The labels a lens for ``model`` translates."""
    return lens_labels(int(model.cfg.n_layers), incl_mid)
