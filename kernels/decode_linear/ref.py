"""Reference for the decode linears: `F.linear`, after `rms_norm` (prenorm, residual add) for the fused one.

    rms_norm_linear: normed, residual = rms_norm(x, norm_weight, residual=residual, prenorm=True)
                     out = normed @ weight.T (+ bias)
    linear:          out = x @ weight.T (+ bias)

`normed` is rounded to x's dtype before the product, as the unfused norm hands it over.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.rms_norm.ref import rms_norm

__all__ = ["decode_linear", "decode_rms_norm_linear"]


def decode_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x `(rows, K)`, weight `(N, K)`, bias `(N,)` -> `(rows, N)` in x's dtype."""
    return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))


def decode_rms_norm_linear(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    *,
    eps: float = 1e-5,
    residual_in_fp32: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x, residual `(rows, K)`, norm_weight `(K,)`, weight `(N, K)` -> (out `(rows, N)` in x's dtype, new residual)."""
    normed, residual = rms_norm(
        x, norm_weight, None, residual, eps=eps, prenorm=True, residual_in_fp32=residual_in_fp32
    )
    return decode_linear(normed, weight, bias), residual
