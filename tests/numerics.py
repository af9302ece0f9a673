"""Tolerances for the tests, derived from float32 arithmetic rather than read off one machine.

Two computations of the same lens (SDPA against the bridge's forward, oneDNN against ``torch.mm``,
the C kernel against torch, lenslib against a float64 reference) round differently, and how they
round depends on the CPU (vector width, FMA, blocking). Every bound below holds for *any*
summation order, so a test built on them passes on any x86 CPU; each function's docstring
gives the step of the derivation it implements. References: N. J. Higham, *Accuracy and
Stability of Numerical Algorithms*, 2nd ed. (2002), chapter 3.

1. Dot products (:func:`gamma`, :func:`logit_error`). With unit roundoff ``u`` (``2**-24`` for
   float32), a dot product of ``n`` terms computed in any order, with or without fused
   multiply-adds, satisfies ``|fl(a.b) - a.b| <= gamma_n sum_i |a_i b_i|`` with
   ``gamma_n = n u / (1 - n u)`` (Higham eq. 3.5; a bias added in the same reduction is one more
   term). By Cauchy-Schwarz ``sum_i |h_i w_i| <= ||h|| ||w||``, so every float32 logit of a
   row ``h`` (``d_model`` long) is within ``R(h) = gamma_{d+1} (||h|| max_v ||w_v|| + max|b|)``
   of its exact value, whichever matmul library or kernel computed it.

2. Two paths (:func:`logit_shift`). Paths that decode rows ``h_A`` and ``h_B`` give logits that
   differ by at most ``delta = ||h_A - h_B|| max_v ||w_v|| + R(h_A) + R(h_B)`` in every column.
   ``h_A - h_B`` is measured (both paths' rows are at hand); the streams themselves are compared
   under :func:`stream_tolerance`.

3. From logits to statistics (:func:`lens_tolerances`). If two logit rows differ by at most
   ``delta`` in every column, then
   - log-probabilities differ by at most ``2 delta`` (log-sum-exp is 1-Lipschitz in the max
     norm), so probabilities by at most ``p (e^{2 delta} - 1)``;
   - entropy by at most ``H (e^{2 delta} - 1)``: along the segment between the two rows,
     ``|dH/ds| <= delta E_p|z - E_p z| <= 2 delta H`` (``E|X - EX| <= 2 E|X - c|`` with
     ``c = max z``, and ``E_p(max z - z) <= H``), and Gronwall's inequality integrates it;
   - KL(f || l) by at most ``(KL + 3)(e^{2 delta} - 1)``: ``dKL/ds`` is the covariance under
     ``f`` of ``dz_f`` with ``L = log p_f - log p_l`` (at most ``2 delta E_f|L|``, and
     ``E_f|L| <= KL + 2`` because ``E_f[(log p_l/p_f)_+] <= E_f[p_l/p_f] <= 1``) plus a term of
     at most ``2 delta`` from ``dz_l``; Gronwall again.

4. The lens's own arithmetic (:func:`sum_error`). Each tile of ``c`` columns is folded into
   float32 sums of ``c`` terms of one sign (``w = exp(z - max)``, ``w (z - max)``), then added
   into float64. A sum of same-sign terms has relative error at most ``gamma_{c-1}``; each term
   carries the rounding of ``z - max`` (through ``exp``, up to ``104 u`` relative: float32
   ``exp`` underflows below -104), of ``exp`` (at most 2 ulps: the C kernel's Cephes polynomial
   is within 1e-7, glibc's and SLEEF's ``expf`` within 1 ulp) and of one product, so every sum
   is within ``eps = gamma_{c + 110}`` relative. That moves log-sum-exp by ``eps``, the entropy
   ``log S + E_p(max - z)`` by ``eps (1 + 2H)`` and the KL by ``eps (2 + 2 KL + 4 H_final)``
   (``E_p(max - z) <= H``; ``E_f(max_l - z_l) <= KL + H_f``). Float64 steps add ~1e-16.

5. Ranks and top-k order (:func:`near_ties`, :func:`assert_ranks_within`,
   :func:`assert_top_ids_agree`). ``rank = 1 + #{v != t : z_v > z_t}``. Two computations whose
   logits are within ``delta`` of each other (the target's logit, computed in float64 and rounded
   to float32, within ``delta + u |z_t|``) can count column ``v`` differently only if its exact
   logit lies within ``2 delta + 2 u |z_t|`` of the target's. So ranks may differ by at most the
   number of such near-ties, counted from the exact (float64) logits of the reference row, and
   must be equal wherever there is none (near the top of a distribution, almost always). Top-k
   ids are equal at place ``j`` wherever the reference's logit gaps to places ``j - 1`` and
   ``j + 1`` exceed ``2 delta``.

6. Residual streams (:func:`stream_tolerance`). No a-priori bound on a whole forward pass is
   useful: a rigorous one multiplies per-layer Lipschitz constants and is vacuous for 18-30
   layers. Two forward paths are instead held to the worst-case rounding of one reduction of
   the longest length ``K`` on the path (``d_model``, ``d_mlp`` or the number of positions),
   ``gamma_K`` times the tensor's largest entry: a criterion, not a proof, and stated as such;
   a larger difference means the paths computed something other than a reordering. The lens
   comparisons then take the measured difference of the decoded rows (step 2), so they do not
   depend on this criterion.

7. bfloat16 (:func:`probabilistic_gamma`). With ``u = 2**-8`` the worst-case ``gamma_n`` exceeds 1
   for ``n > 256`` and bounds nothing. Tests of bf16 paths use Higham and Mary's probabilistic
   bound (SIAM J. Sci. Comput. 41 (2019) A2815, Thm 3.1): with independent mean-zero rounding
   errors, ``|fl(a.b) - a.b| <= lambda sqrt(n) u sum|a_i b_i|`` (to first order) except with
   probability at most ``2 n exp(-lambda^2 / 2)``.

>>> f"{gamma(640):.3e}"               # a Gemma 3 logit: 640 products, any summation order
'3.815e-05'
>>> round(sum_error(2048) / gamma(2048), 3)
1.054
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

U32 = 2.0**-24  # float32 unit roundoff
U64 = 2.0**-53  # float64 unit roundoff
UBF16 = 2.0**-8  # bfloat16 unit roundoff (8 significant bits)
SUBNORMAL32 = 2.0**-150  # float32's absolute rounding in its subnormal range (probabilities < 1e-38)
EXP_UNDERFLOW = 104.0  # float32 exp(x) is 0 below x = -103.97: larger |x| never weigh in a sum
EXP_ULPS = 2  # float32 exp: Cephes polynomial (C kernel) ~1e-7 = 1.7 ulps; glibc / SLEEF <= 1 ulp
SOFTCAP_ULPS = 4  # c * tanh(z / c): a division, tanh (<= 2 ulps), a product


def gamma(n: int, u: float = U32) -> float:
    """``gamma_n = n u / (1 - n u)``: relative bound of ``n`` roundings (Higham eq. 3.5)."""
    if n * u >= 1:
        raise ValueError(f"gamma_{n} with u={u} is unbounded: use probabilistic_gamma")
    return n * u / (1 - n * u)


def probabilistic_gamma(n: int, u: float = UBF16, lam: float = 10.0) -> float:
    """Higham-Mary's ``lambda sqrt(n) u`` (first order), failing with probability at most
    ``2 n exp(-lambda^2 / 2)`` per dot product (``lambda = 10``: 4e-22 n)."""
    return math.exp(lam * math.sqrt(n) * u + n * u * u / (1 - u)) - 1


def unembedding_norm(W_U: Tensor, b_U: Optional[Tensor] = None) -> tuple[float, float]:
    """``(max_v ||w_v||_2, max_v |b_v|)`` for ``W_U`` ``[d_model, d_vocab]``."""
    w = float(W_U.detach().double().norm(dim=0).max())
    b = 0.0 if b_U is None else float(b_U.detach().double().abs().max())
    return w, b


def logit_error(
    rows: Tensor, W_U: Tensor, b_U: Optional[Tensor] = None, u: float = U32, stored: float = 0.0
) -> Tensor:
    """``R(h)``: the most any logit of each row can be off its exact value (step 1), any kernel.

    Args:
        rows: ``[..., d_model]`` the rows decoded (the normalised stream).
        W_U, b_U: the unembedding ``[d_model, d_vocab]`` and bias (or None).
        u: the unit roundoff of the accumulation.
        stored: the unit roundoff of the logits' dtype where it is narrower than the
            accumulation's (:data:`UBF16` for a bfloat16 matmul, which torch accumulates in
            float32 on CPU and rounds once on output): one more ``stored max_v |z_v|``, with the
            row's largest logit computed exactly (float64), since Cauchy-Schwarz would overstate
            it tenfold.

    Returns:
        ``[...]`` float64, nats of logit.
    """
    w, b = unembedding_norm(W_U, b_U)
    d_model = rows.shape[-1] + (0 if b_U is None else 1)
    size = rows.detach().double().norm(dim=-1) * w + b  # >= sum_i |h_i w_i| + |b|
    error = gamma(d_model, u) * size
    if stored:
        largest = exact_logits(rows, W_U, b_U).abs().amax(-1)
        error = error + stored * (largest + error)
    return error


def matmul_error(x: Tensor, W: Tensor, b: Optional[Tensor] = None, u: float = U32) -> Tensor:
    """Elementwise bound on ``fl(x @ W + b) - (x @ W + b)`` (step 1 without Cauchy-Schwarz):
    ``gamma_{n+1} (|x| @ |W| + |b|)``, float64, for ``x`` ``[..., n]`` and ``W`` ``[n, m]``."""
    n = W.shape[0] + (0 if b is None else 1)
    size = x.detach().double().abs() @ W.detach().double().abs()
    if b is not None:
        size = size + b.detach().double().abs()
    return gamma(n, u) * size


def logit_shift(
    rows_a: Tensor,
    rows_b: Optional[Tensor],
    W_U: Tensor,
    b_U: Optional[Tensor] = None,
    *,
    rounded: int = 2,
    softcap: Optional[float] = None,
) -> Tensor:
    """``delta``: how far apart any logit of two computations' rows can be (step 2).

    Args:
        rows_a, rows_b: ``[..., d_model]`` the rows each computation decoded; ``rows_b=None``
            when both decode the same rows (two matmul libraries on one input).
        rounded: how many of the two computations round their logits in float32 (1 against an
            exact float64 reference, 2 for two float32 paths).
        softcap: the model's logit soft-cap ``c`` if it has one (``c tanh(z / c)`` is
            1-Lipschitz; its evaluation adds :data:`SOFTCAP_ULPS` ulps of ``c`` per path).

    Returns:
        ``[...]`` float64, nats of logit.
    """
    w, _ = unembedding_norm(W_U, b_U)
    same = rows_b is None
    rows_b = rows_a if same else rows_b
    apart = 0.0 if same else (rows_a.detach().double() - rows_b.detach().double()).norm(dim=-1) * w
    errors = [logit_error(rows_a, W_U, b_U), logit_error(rows_b, W_U, b_U)][:rounded]
    cap = 0.0 if softcap is None else rounded * SOFTCAP_ULPS * U32 * softcap
    return apart + sum(errors) + cap


def weights_shift(
    rows_a: Tensor, rows_b: Tensor, W_a: Tensor, W_b: Tensor, stored_a: float = 0.0, stored_b: float = 0.0
) -> Tensor:
    """``delta`` (step 2) when the two computations also decode with different unembeddings
    (a bfloat16 copy of the weights against float32 ones): ``h_a w_a - h_b w_b`` is
    ``h_a (w_a - w_b) + (h_a - h_b) w_b``: the first term computed exactly (float64, its largest
    entry per row), the second at most ``||h_a - h_b|| max||w_b||``; plus each side's rounding
    (``stored``: see :func:`logit_error`)."""
    spread = (rows_a.detach().double() @ (W_a.detach().double() - W_b.detach().double())).abs().amax(-1)
    apart = (rows_a.detach().double() - rows_b.detach().double()).norm(dim=-1) * unembedding_norm(W_b)[0]
    return (apart + spread
            + logit_error(rows_a, W_a, stored=stored_a) + logit_error(rows_b, W_b, stored=stored_b))


def criterion_shift(model, rows: Tensor, n_pos: int) -> Tensor:
    """``delta`` (step 2) for two forward runs of the same prompt whose rows are not both at hand
    (another batch, another caller): ``rows`` ``[..., d_model]`` from one run; the other's are
    held to step 6's criterion per entry, ``gamma_K max|rows|``, so within ``sqrt(d)`` times that
    in norm; both unembeddings round."""
    W_U, b_U, _, _ = unembedding(model)
    w, _ = unembedding_norm(W_U, b_U)
    apart = rows.shape[-1] ** 0.5 * stream_tolerance(longest_reduction(model, n_pos), rows) * w
    return apart + 2 * logit_error(rows, W_U, b_U) + gamma(rows.shape[-1] + 1) * apart  # R of the other rows


def sum_error(columns: int) -> float:
    """``eps``: relative error of the lens's float32 tile sums over ``columns`` (step 4)."""
    return gamma(columns + EXP_ULPS + int(EXP_UNDERFLOW) + 4)


def stream_tolerance(reduction_length: int, reference: Tensor) -> float:
    """``gamma_K max|reference|``: one worst-case reduction of length ``K`` (step 6, a criterion)."""
    return gamma(reduction_length) * float(reference.detach().abs().max())


def longest_reduction(model, n_pos: int) -> int:
    """``K`` for :func:`stream_tolerance`: the longest sum in one block of ``model`` (a
    TransformerBridge) over ``n_pos`` positions."""
    cfg = model.cfg
    return max(int(cfg.d_model), int(getattr(cfg, "d_mlp", None) or 0), int(n_pos))


def lens_tolerances(
    delta: Tensor,
    a,
    b,
    *,
    columns: int,
    tiled: int = 2,
) -> dict[str, Tensor]:
    """Per-cell tolerances for the lens statistics of two computations (steps 3 and 4).

    Args:
        delta: ``[layer, pos]`` :func:`logit_shift` of the decoded rows; the last layer is the
            final one (KL's reference row, whose own shift counts too).
        a, b: the two results (anything with ``entropy``, ``kl_to_final`` and, where compared,
            ``target_logprob``, ``[layer, pos]``); the bound takes the larger of the two.
        columns: the lens's tile width (``min(d_vocab, lenslib.core.stats.TILE_COLUMNS)``, or
            less with a small ``chunk_bytes``: more columns only loosen the bound).
        tiled: how many of the two went through the lens's float32 tile sums (1 against a
            float64 reference).

    Returns:
        ``{"entropy", "kl_to_final", "logprob", "prob_rtol"}``: float64 ``[layer, pos]``
        absolute bounds in nats, and the relative bound of any probability (``|dp| <= p x``,
        plus :data:`SUBNORMAL32` per side where a probability is stored below float32's normal
        range). Every float32 output is also rounded once more when stored (``u`` relative, each
        side).
    """
    eps = tiled * sum_error(columns)
    grow = torch.expm1(2 * delta.double())
    grow_kl = torch.expm1(2 * torch.maximum(delta, delta[-1:]).double())  # both rows move
    H = torch.maximum(a.entropy.double(), b.entropy.double())
    kl = torch.maximum(a.kl_to_final.double(), b.kl_to_final.double())
    H_final = H[-1:].expand_as(H)
    stored = 2 * U32
    return {
        "entropy": H * grow + eps * (1 + 2 * H) + stored * H,
        "kl_to_final": (kl + 3) * grow_kl + eps * (2 + 2 * kl + 4 * H_final) + stored * kl,
        "logprob": 2 * delta.double() + eps,
        "prob_rtol": torch.expm1(2 * delta.double() + eps) + stored,
    }


def assert_within(got: Tensor, want: Tensor, tolerance, what: str, equal_nan: bool = False) -> float:
    """``|got - want| <= tolerance`` elementwise (float64); returns the largest ratio
    ``|got - want| / tolerance`` seen, so a caller can report how much of its bound was used."""
    got, want = got.detach().double(), want.detach().double()
    tolerance = torch.as_tensor(tolerance, dtype=torch.float64).expand_as(want)
    if equal_nan:
        nan = got.isnan()
        assert torch.equal(nan, want.isnan()), f"{what}: NaN in different places"
        got, want, tolerance = got[~nan], want[~nan], tolerance[~nan]
    gap = torch.where(got == want, 0.0, (got - want).abs())  # equal infinities agree
    bad = ~(gap <= tolerance)
    if bad.any():
        worst = int((gap - tolerance).argmax())
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {gap.numel()} entries beyond the derived bound; worst "
            f"|{float(got.flatten()[worst])} - {float(want.flatten()[worst])}| = {float(gap.flatten()[worst]):.3g} "
            f"> {float(tolerance.flatten()[worst]):.3g}"
        )
    return float((gap / tolerance.clamp_min(1e-300)).max()) if gap.numel() else 0.0


def exact_logits(
    rows: Tensor, W_U: Tensor, b_U: Optional[Tensor] = None, transform: Optional[Callable] = None
) -> Tensor:
    """``rows @ W_U (+ b_U)`` in float64 (then the model's transform), ``[..., d_vocab]``."""
    logits = rows.detach().double() @ W_U.detach().double()
    if b_U is not None:
        logits = logits + b_U.detach().double()
    return logits if transform is None else transform(logits)


def near_ties(exact: Tensor, target_ids: Tensor, window: Tensor) -> Tensor:
    """``#{v != t : |z_v - z_t| <= window}`` per row (step 5).

    Args:
        exact: ``[n, d_vocab]`` float64 logits of the reference rows.
        target_ids: ``[n]`` the target per row.
        window: ``[n]`` the half-width, ``2 delta + 2 u |z_t|``.
    """
    z_t = exact.gather(-1, target_ids.view(-1, 1).long())
    close = (exact - z_t).abs() <= window.view(-1, 1)
    return close.sum(-1) - 1  # the target itself is always within


def assert_ranks_within(
    rank_a: Tensor,
    rank_b: Tensor,
    rows_ref: Tensor,
    W_U: Tensor,
    b_U: Optional[Tensor],
    target_ids: Tensor,
    delta: Tensor,
    transform: Optional[Callable] = None,
) -> int:
    """Ranks ``[layer, pos]`` differ by at most the near-ties of the target (step 5), and are
    equal where it has none. Only cells whose ranks differ need the exact logits.

    Args:
        rows_ref: ``[layer, pos, d_model]`` the reference computation's rows.
        target_ids: ``[pos]`` (-1: none; such cells must have rank 0 on both sides).
        delta: ``[layer, pos]`` :func:`logit_shift`.

    Returns:
        The number of cells where the ranks differ (each within its near-ties).
    """
    has = (target_ids >= 0).view(1, -1).expand_as(rank_a)
    assert (rank_a[~has] == 0).all() and (rank_b[~has] == 0).all()
    moved = (rank_a - rank_b).abs() * has
    cells = moved.nonzero(as_tuple=True)
    if not cells[0].numel():
        return 0
    rows = rows_ref[cells]
    exact = exact_logits(rows, W_U, b_U, transform)
    targets = target_ids.view(1, -1).expand_as(rank_a)[cells]
    z_t = exact.gather(-1, targets.view(-1, 1)).squeeze(-1)
    window = 2 * delta[cells].double() + 2 * U32 * z_t.abs()
    ties = near_ties(exact, targets, window)
    over = moved[cells] > ties
    assert not over.any(), (
        f"ranks differ by {moved[cells][over].tolist()} where the target has only "
        f"{ties[over].tolist()} near-ties within {window[over].tolist()} nats (cells "
        f"{[(int(l), int(p)) for l, p in zip(cells[0][over], cells[1][over])]})"
    )
    return int(cells[0].numel())


def assert_top_ids_agree(ids_a: Tensor, ids_b: Tensor, probs_b: Tensor, delta: Tensor) -> Tensor:
    """Top-k ids ``[layer, pos, k]`` equal at every place whose neighbours in ``b`` are more than
    ``2 delta`` away in logit (step 5; a logit gap is ``log(p_j / p_{j+1})``, and the float32
    probabilities add ``2 u`` to it).

    Returns:
        ``[layer, pos, k - 1]`` which places were separated (so checked); the last place is not,
        since its neighbour below is not in the top-k.
    """
    log_p = probs_b.double().clamp_min(1e-300).log()
    gap = log_p[..., :-1] - log_p[..., 1:]  # [layer, pos, k - 1], >= 0
    need = 2 * delta.double().unsqueeze(-1) + 4 * U32
    above = gap > need  # place j separated from j + 1
    below = torch.cat([torch.ones_like(above[..., :1]), above[..., :-1]], -1)  # j from j - 1
    separated = above & below
    k = ids_a.shape[-1] - 1
    assert torch.equal(ids_a[..., :k][separated], ids_b[..., :k][separated]), "top ids differ where separated"
    return separated


def assert_lens_agrees(
    model,
    a,
    b,
    rows_a: Tensor,
    rows_b: Optional[Tensor],
    *,
    rounded: int = 2,
    tiled: int = 2,
    min_separated: float = 0.5,
) -> Tensor:
    """Two lens results of ``model`` agree up to float32 rounding (steps 2-5).

    Statistics are within the bounds that the measured difference of the decoded rows and the
    unembedding's rounding allow; top ids are equal wherever their logits in ``b`` are further
    apart than that; ranks differ only by the target's near-ties.

    Args:
        a, b: :class:`lenslib.LensResult` s, or anything with the same ``[layer, pos]`` fields
            (a float64 reference's, with ``tiled=1``).
        rows_a, rows_b: the rows each decoded (:func:`decoded`); ``rows_b=None``: the same rows.
        rounded, tiled: as in :func:`logit_shift` and :func:`lens_tolerances`.
        min_separated: the share of cells whose top-1 must be separated from the top-2 (so the
            top-1 check is not waived everywhere as a near-tie).

    Returns:
        ``delta`` ``[layer, pos]`` (:func:`logit_shift`).
    """
    W_U, b_U, cap, transform = unembedding(model)
    delta = logit_shift(rows_a, rows_b, W_U, b_U, rounded=rounded, softcap=cap)
    tol = lens_tolerances(delta, a, b, columns=tile_columns(model), tiled=tiled)
    assert_within(a.entropy, b.entropy, tol["entropy"], "entropy")
    assert_within(a.kl_to_final, b.kl_to_final, tol["kl_to_final"], "kl_to_final")
    larger = torch.maximum(a.top_probs, b.top_probs).double()
    stored = 2 * SUBNORMAL32
    assert_within(a.top_probs, b.top_probs, larger * tol["prob_rtol"].unsqueeze(-1) + stored, "top_probs")
    larger = torch.fmax(a.target_prob, b.target_prob).double()
    assert_within(a.target_prob, b.target_prob, larger * tol["prob_rtol"] + stored, "target_prob", equal_nan=True)
    assert_within(a.target_logprob, b.target_logprob, tol["logprob"], "target_logprob", equal_nan=True)
    if a.top_ids.shape[-1] > 1:
        separated = assert_top_ids_agree(a.top_ids, b.top_ids, b.top_probs, delta)
        assert fraction(separated[..., 0]) >= min_separated, f"top-1 separated in {fraction(separated[..., 0]):.2f}"
    rows_ref = rows_a if rows_b is None else rows_b
    assert_ranks_within(a.target_rank, b.target_rank, rows_ref, W_U, b_U, b.target_ids, delta, transform)
    return delta


def fraction(mask: Tensor) -> float:
    """Share of ``True`` in ``mask`` (how much of a check was not waived as a near-tie)."""
    return float(mask.float().mean()) if mask.numel() else 1.0


def unembedding(model) -> tuple[Tensor, Optional[Tensor], Optional[float], Optional[Callable]]:
    """``(W_U, b_U or None, soft-cap or None, transform or None)`` of a TransformerBridge, as the
    lens decodes with them (a zero ``b_U`` is no bias: the lens skips it)."""
    from lenslib.core.bridge import output_transform
    from lenslib.core.stats import effective_bias

    transform = output_transform(model)
    cap = None if transform is None else float(model.cfg.output_logits_soft_cap)
    exact = None if cap is None else (lambda z: cap * torch.tanh(z / cap))
    return model.W_U, effective_bias(getattr(model, "b_U", None)), cap, exact


def tile_columns(model) -> int:
    """The widest vocabulary tile the lens uses on ``model`` (the ``c`` of :func:`sum_error`)."""
    from lenslib.core.stats import TILE_COLUMNS

    return min(int(model.cfg.d_vocab), TILE_COLUMNS)


def decoded(model, results: Sequence, forward: str, incl_mid: bool = False, lens=None) -> list[Tensor]:
    """The normalised rows ``[layer, pos, d_model]`` each result's lens decoded, recomputed by
    :func:`lenslib.lens.batch.decoded_rows` with the same prompts run as one batch and the same
    forward path (deterministic: the same numbers the lens saw). ``results``: anything with
    ``input_ids`` and ``positions``; ``lens``: the tuned lens's translators, if one was used."""
    from lenslib.lens.batch import decoded_rows

    with torch.no_grad():
        rows, _, path = decoded_rows(
            model, [r.input_ids for r in results], [r.positions for r in results],
            incl_mid=incl_mid, forward=forward, lens=lens,
        )
    assert path == forward
    sizes = [r.positions.numel() for r in results]
    return list(rows.split(sizes, dim=1))
