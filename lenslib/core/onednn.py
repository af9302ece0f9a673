"""Float32 matmuls on oneDNN: the lens's vocabulary tiles and the linear layers of its forward.

On CPU, ``torch.mm`` and ``nn.Linear`` call MKL's sgemm. oneDNN, the other matmul library bundled
with torch (its ``mkldnn`` backend, reached through ``torch.ops.mkldnn._linear_pointwise``, the
op torch's own compiler emits for linear layers on CPU), can run both of the lens's matmuls
faster than MKL in float32 with float32 accumulation; how much depends on the CPU, and
``python -m bench lens`` measures it (cases d and d_torch, bench/results.md).

oneDNN takes the weight as ``[out, in]``: ``nn.Linear``'s layout and the Hugging Face
``lm_head``'s, of which a ``TransformerBridge``'s ``W_U`` is a transposed view. With a strided
weight it was many times slower than MKL, so it is used only where the weight is contiguous in
that layout; and only on CPU, for float32, unless ``LENSLIB_MATMUL=torch``, torch's mkldnn
backend is off or unavailable, or ``torch.backends.mkldnn.matmul.fp32_precision`` asks for
reduced precision (torch then follows that setting on its own path). A self-check against
float64 runs once before first use; should it fail, or the op be missing in this torch, torch's
own matmul is used. :func:`matmul_backend` says which one a lens's tiles run on; the forward's
layers are switched by :func:`use_for_linear_layers` (``lenslib.core.forward``'s SDPA shadow).

>>> import torch
>>> rows, W_U = torch.randn(3, 8), torch.randn(16, 8).T   # W_U [d_model, d_vocab], W_U.T contiguous
>>> out = torch.empty(3, 4)
>>> tile = tile_matmul(rows, W_U, None, 4, 8, out)
>>> bool(torch.allclose(tile, rows @ W_U[:, 4:8], atol=1e-5)), tile.shape
(True, torch.Size([3, 4]))
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Literal, Optional

import torch
from jaxtyping import Float
from torch import Tensor

from lenslib.errors import InputError

Backend = Literal["onednn", "torch.mm"]


def mode() -> str:
    """``LENSLIB_MATMUL``: ``auto`` (default: oneDNN where it applies), ``onednn`` (an error
    where it does not) or ``torch`` (always ``torch.mm``)."""
    value = os.environ.get("LENSLIB_MATMUL", "auto").strip().lower() or "auto"
    if value not in ("auto", "onednn", "torch"):
        raise InputError(f"LENSLIB_MATMUL must be auto, onednn or torch; got {value!r}")
    return value


def matmul_backend(rows: Tensor, W_U: Tensor) -> Backend:
    """Which library :func:`tile_matmul` uses for ``rows @ W_U[:, c0:c1]``.

    Raises:
        RuntimeError: ``LENSLIB_MATMUL=onednn`` where oneDNN does not apply (says why).
    """
    if mode() == "torch":
        return "torch.mm"
    reason = onednn_unavailable_reason(rows, W_U)
    if reason is None:
        return "onednn"
    if mode() == "onednn":
        raise RuntimeError(f"LENSLIB_MATMUL=onednn, but oneDNN cannot run this matmul: {reason}")
    return "torch.mm"


def onednn_unavailable_reason(rows: Tensor, W_U: Tensor) -> Optional[str]:
    """Why oneDNN would not give ``rows @ W_U`` in full float32, or ``None`` if it would."""
    if rows.device.type != "cpu" or W_U.device.type != "cpu":
        return "it runs on CPU only"
    if rows.dtype != torch.float32 or W_U.dtype != torch.float32:
        return f"rows and W_U must be float32 (got {rows.dtype} and {W_U.dtype})"
    if not W_U.T.is_contiguous():
        return "W_U.T is not contiguous (oneDNN wants the [d_vocab, d_model] layout)"
    return _library_unavailable_reason()


def _library_unavailable_reason() -> Optional[str]:
    """Why torch's oneDNN cannot be used for full-precision float32 here, or ``None``."""
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return "torch's mkldnn backend is unavailable or disabled"
    precision = getattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision", "none")
    if precision not in ("none", "ieee"):
        return f"torch.backends.mkldnn.matmul.fp32_precision is {precision!r} (reduced precision)"
    return _self_check_failure()


def tile_matmul(
    rows: Float[Tensor, "row d_model"],
    W_U: Float[Tensor, "d_model d_vocab"],
    b_U: Optional[Float[Tensor, "d_vocab"]],
    col0: int,
    col1: int,
    out: Float[Tensor, "row cols"],
    backend: Optional[Backend] = None,
) -> Float[Tensor, "row cols"]:
    """``rows @ W_U[:, col0:col1] (+ b_U[col0:col1])``, float32.

    ``torch.mm`` writes into ``out`` and returns it. oneDNN has no ``out=`` form and returns a
    new tensor (copying it into ``out`` cost 6% of the matmul's time, Gemma 3 at 512 tokens), so
    a caller holding the previous tile while the next is made holds two tiles.
    ``backend`` is :func:`matmul_backend`'s answer (asked here when ``None``; a caller running
    many tiles asks once).
    """
    backend = backend or matmul_backend(rows, W_U)
    bias = None if b_U is None else b_U[col0:col1]
    if backend == "onednn":
        weight = W_U.T[col0:col1]  # [cols, d_model], contiguous
        return torch.ops.mkldnn._linear_pointwise(rows.contiguous(), weight, bias, "none", [], "")
    if bias is None:
        return torch.mm(rows, W_U[:, col0:col1], out=out)
    return torch.addmm(bias, rows, W_U[:, col0:col1], out=out)


def linear(
    x: Float[Tensor, "row n_in"], weight: Float[Tensor, "n_out n_in"], bias: Optional[Float[Tensor, "n_out"]] = None,
) -> Float[Tensor, "row n_out"]:
    """``x @ weight.T (+ bias)`` without autograd, on oneDNN where it applies (float32 on CPU,
    ``weight`` contiguous, the library's self-check passed, ``LENSLIB_MATMUL`` not ``torch``),
    else on torch. For weights gathered per call, e.g. the rows of ``W_U.T`` a tuned-lens
    refinement step samples.

    >>> x, weight = torch.randn(3, 8), torch.randn(5, 8)
    >>> bool(torch.allclose(linear(x, weight), x @ weight.T, atol=1e-5))
    True
    """
    usable = (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32 and weight.is_contiguous()
              and mode() != "torch" and _library_unavailable_reason() is None)
    if mode() == "onednn" and not usable:
        raise RuntimeError("LENSLIB_MATMUL=onednn, but oneDNN cannot run this product (float32 CPU tensors, "
                           f"a contiguous weight and a working mkldnn backend needed: {_library_unavailable_reason()})")
    if usable:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")
    out = x @ weight.T
    return out if bias is None else out + bias


class OneDNNLinear(torch.nn.Linear):
    """``nn.Linear`` whose float32 CPU forward runs on oneDNN (same parameters, same result up
    to float32 rounding); any other input, a strided one (oneDNN can be very slow on those),
    and anything that needs a gradient (the oneDNN op has none) go through
    ``nn.Linear.forward``."""

    def forward(self, x: Tensor) -> Tensor:
        plain = x.dtype != torch.float32 or x.device.type != "cpu" or self.weight.dtype != torch.float32
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        strided = not (x.is_contiguous() and self.weight.is_contiguous())
        if plain or needs_grad or strided:
            return super().forward(x)
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def use_for_linear_layers(module: torch.nn.Module) -> int:
    """Run ``module``'s plain ``nn.Linear`` layers on oneDNN, in place; returns how many.

    Does nothing (returns 0) with ``LENSLIB_MATMUL=torch`` or where oneDNN is unavailable (see
    the module docstring). Only exact ``nn.Linear`` instances change class, to
    :class:`OneDNNLinear`, which has the same state: subclasses with their own forward are left.

    Raises:
        RuntimeError: ``LENSLIB_MATMUL=onednn`` where oneDNN is unavailable (says why).
    """
    if mode() == "torch":
        return 0
    reason = _library_unavailable_reason()
    if reason is not None:
        if mode() == "onednn":
            raise RuntimeError(f"LENSLIB_MATMUL=onednn, but oneDNN cannot be used: {reason}")
        return 0
    linears = [m for m in module.modules() if type(m) is torch.nn.Linear]
    for layer in linears:
        layer.__class__ = OneDNNLinear
    return len(linears)


@lru_cache(maxsize=1)
def _self_check_failure() -> Optional[str]:
    """Run oneDNN once on a small product (with a bias and an odd shape) against float64."""
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(37, 200, generator=generator)
    weight = torch.randn(129, 200, generator=generator)  # [out, in]
    bias = torch.randn(129, generator=generator)
    try:
        got = torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "none", [], "")
    except (AttributeError, RuntimeError) as error:
        return f"torch.ops.mkldnn._linear_pointwise failed: {error}"
    want = rows.double() @ weight.double().T + bias.double()
    error = float((got.double() - want).abs().max())
    if got.shape != want.shape or not error < 1e-3:
        return f"its self-check against float64 failed (max abs error {error:.3g})"
    return None
