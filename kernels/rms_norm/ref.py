"""Fused residual add + normalization in pure PyTorch: the spec, the test oracle and the CPU path.

Pre-norm residual blocks do `residual = x + residual; out = norm(residual)` before every mixer. Fusing the add into
the norm saves a full read and write of the hidden states. With rows `r = x + residual` (or `x` alone)::

    rms_norm:   out = r / sqrt(mean(r^2) + eps) * weight (+ bias)
    layer_norm: out = (r - mean(r)) / sqrt(var(r) + eps) * weight (+ bias)

Statistics are computed in fp32. `out` has x's dtype; the returned residual is fp32 when `residual_in_fp32`,
otherwise x's dtype.
"""

from __future__ import annotations

import torch

__all__ = ["rms_norm", "layer_norm"]


def _add_norm(x, weight, bias, residual, eps, prenorm, residual_in_fp32, is_rms_norm):
    rows = x.float() if residual is None else x.float() + residual.float()
    if is_rms_norm:
        normed = rows * torch.rsqrt(rows.square().mean(-1, keepdim=True) + eps)
    else:
        centered = rows - rows.mean(-1, keepdim=True)
        normed = centered * torch.rsqrt(centered.square().mean(-1, keepdim=True) + eps)
    out = normed * weight.float()
    if bias is not None:
        out = out + bias.float()
    out = out.to(x.dtype)
    if not prenorm:
        return out
    return out, rows if residual_in_fp32 else rows.to(x.dtype)


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    *,
    eps: float = 1e-5,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
):
    """`(..., hidden)` -> RMSNorm(x + residual); also returns the new residual when `prenorm`."""
    return _add_norm(x, weight, bias, residual, eps, prenorm, residual_in_fp32, is_rms_norm=True)


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    *,
    eps: float = 1e-5,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
):
    """`(..., hidden)` -> LayerNorm(x + residual); also returns the new residual when `prenorm`."""
    return _add_norm(x, weight, bias, residual, eps, prenorm, residual_in_fp32, is_rms_norm=False)
