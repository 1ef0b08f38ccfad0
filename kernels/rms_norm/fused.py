"""Fused residual add + RMSNorm / LayerNorm in Triton: forward and backward kernels.

Math (spec: `kernels/rms_norm/ref.py`), per row of `hidden` values, in fp32::

    r    = x + residual                        (x alone without a residual)
    xhat = r * rstd,  rstd = 1 / sqrt(mean(r^2) + eps)                         (RMSNorm)
    xhat = (r - mu) * rstd,  rstd = 1 / sqrt(mean((r - mu)^2) + eps)          (LayerNorm)
    out  = xhat * w + b

Backward, with `wdy = w * dout` and `dr_extra` the gradient of the returned residual (prenorm)::

    dr = rstd * (wdy - xhat * mean(wdy * xhat))                   (RMSNorm)
    dr = rstd * (wdy - xhat * mean(wdy * xhat) - mean(wdy))       (LayerNorm)
    dx = dresidual = dr + dr_extra;   dw = sum_rows dout * xhat;   db = sum_rows dout

One program normalizes one row (the whole row in registers); the backward recomputes `r` from x and residual instead
of saving it, and each program sums dw/db over a strip of rows before a final sum over programs in PyTorch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._triton_utils import call_op, empty, pdl, unit_stride, wait_for_previous_kernel

__all__ = ["layer_norm", "rms_norm"]


@triton.jit
def _add_norm_fwd_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    b_ptr,
    out_ptr,
    res_out_ptr,
    mean_ptr,
    rstd_ptr,
    hidden,
    eps,
    stride_x,
    stride_res,
    stride_out,
    stride_res_out,
    IS_RMS_NORM: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    STORE_RESIDUAL: tl.constexpr,
    BLOCK_N: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)  # [BLOCK_N]
    mask = cols < hidden
    wait_for_previous_kernel(USE_PDL)  # x comes from the kernel before
    r = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r += tl.load(res_ptr + row * stride_res + cols, mask=mask, other=0.0).to(tl.float32)
    if STORE_RESIDUAL:
        tl.store(res_out_ptr + row * stride_res_out + cols, r.to(res_out_ptr.dtype.element_ty), mask=mask)
    if IS_RMS_NORM:
        xc = r
    else:
        mean = tl.sum(r, axis=0) / hidden
        tl.store(mean_ptr + row, mean)
        xc = tl.where(mask, r - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / hidden + eps)
    tl.store(rstd_ptr + row, rstd)
    y = xc * rstd * tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _add_norm_bwd_kernel(
    dout_ptr,
    dres_out_ptr,
    x_ptr,
    res_ptr,
    w_ptr,
    mean_ptr,
    rstd_ptr,
    dx_ptr,
    dres_ptr,
    dw_ptr,
    db_ptr,
    rows,
    hidden,
    rows_per_program,
    stride_dout,
    stride_dres_out,
    stride_x,
    stride_res,
    IS_RMS_NORM: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_DRES_OUT: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)  # [BLOCK_N]
    mask = cols < hidden
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    db = tl.zeros([BLOCK_N], dtype=tl.float32)
    row_start = pid * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, rows)
    first = row_start.to(tl.int64)
    # Pointers advance by one row per iteration (64-bit pointer arithmetic, no int32 row * stride products).
    x_row = x_ptr + first * stride_x
    dout_row = dout_ptr + first * stride_dout
    dx_row = dx_ptr + first * hidden
    if HAS_RESIDUAL:
        res_row = res_ptr + first * stride_res
        dres_row = dres_ptr + first * hidden
    if HAS_DRES_OUT:
        dres_out_row = dres_out_ptr + first * stride_dres_out
    mean_row = mean_ptr + first
    rstd_row = rstd_ptr + first
    for _ in range(row_start, row_end):
        r = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            r += tl.load(res_row + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_row)
        if IS_RMS_NORM:
            xhat = r * rstd
        else:
            xhat = tl.where(mask, (r - tl.load(mean_row)) * rstd, 0.0)
        dy = tl.load(dout_row + cols, mask=mask, other=0.0).to(tl.float32)
        dw += dy * xhat
        if HAS_BIAS:
            db += dy
        wdy = w * dy
        c1 = tl.sum(xhat * wdy, axis=0) / hidden
        if IS_RMS_NORM:
            dr = (wdy - xhat * c1) * rstd
        else:
            c2 = tl.sum(wdy, axis=0) / hidden
            dr = (wdy - xhat * c1 - c2) * rstd
        if HAS_DRES_OUT:
            dr += tl.load(dres_out_row + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(dx_row + cols, dr.to(dx_ptr.dtype.element_ty), mask=mask)
        if HAS_RESIDUAL:
            tl.store(dres_row + cols, dr.to(dres_ptr.dtype.element_ty), mask=mask)
        x_row += stride_x
        dout_row += stride_dout
        dx_row += hidden
        if HAS_RESIDUAL:
            res_row += stride_res
            dres_row += hidden
        if HAS_DRES_OUT:
            dres_out_row += stride_dres_out
        mean_row += 1
        rstd_row += 1
    # One fp32 atomic add per column and program: no [programs, hidden] partials to reduce in a separate kernel.
    tl.atomic_add(dw_ptr + cols, dw, mask=mask, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(db_ptr + cols, db, mask=mask, sem="relaxed")


def _rows(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.reshape(-1, t.shape[-1])


def _num_warps(block_n: int) -> int:
    return min(max(block_n // 256, 1), 8)


def _add_norm_fwd(x, weight, bias, residual, eps, is_rms_norm, prenorm, residual_in_fp32):
    """Launch the forward on `(..., hidden)`. Returns out (x.dtype), the new residual (empty unless prenorm), and the
    per-row mean (empty for RMSNorm) and rstd, fp32."""
    x, weight, bias, residual = unit_stride(x, weight, bias, residual)
    shape, hidden = x.shape, x.shape[-1]
    x2, res2 = _rows(x), _rows(residual)
    rows = x2.shape[0]
    out = empty(rows, hidden, device=x.device, dtype=x.dtype)
    res_dtype = torch.float32 if residual_in_fp32 else x.dtype
    res_out = empty(rows if prenorm else 0, hidden, device=x.device, dtype=res_dtype)
    mean = empty(0 if is_rms_norm else rows, device=x.device, dtype=torch.float32)
    rstd = empty(rows, device=x.device, dtype=torch.float32)
    if rows:
        block_n = triton.next_power_of_2(hidden)
        use_pdl = pdl(x.device)
        _add_norm_fwd_kernel[(rows,)](
            x2,
            res2,
            weight,
            bias,
            out,
            res_out,
            mean,
            rstd,
            hidden,
            eps,
            x2.stride(0),
            res2.stride(0) if res2 is not None else 0,
            out.stride(0),
            hidden,
            IS_RMS_NORM=is_rms_norm,
            HAS_RESIDUAL=res2 is not None,
            HAS_BIAS=bias is not None,
            STORE_RESIDUAL=prenorm,
            BLOCK_N=block_n,
            USE_PDL=use_pdl,
            launch_pdl=use_pdl,
            num_warps=_num_warps(block_n),
        )
    return out.view(shape), res_out.view(shape if prenorm else (0,)), mean, rstd


def _add_norm_bwd(dout, dres_out, x, weight, bias, residual, mean, rstd, is_rms_norm):
    """Launch the backward. Returns (dx, dweight, dbias, dresidual), None where the input is None."""
    dout, dres_out, x, weight, residual = unit_stride(dout, dres_out, x, weight, residual)
    shape, hidden = x.shape, x.shape[-1]
    x2, res2, dout2, dres2 = _rows(x), _rows(residual), _rows(dout), _rows(dres_out)
    rows = x2.shape[0]
    dx = empty(rows, hidden, device=x.device, dtype=x.dtype)
    dres = empty(rows, hidden, device=x.device, dtype=residual.dtype) if residual is not None else None
    if x.is_cuda:
        n_programs = min(rows, 4 * torch.cuda.get_device_properties(x.device).multi_processor_count)
    else:
        n_programs = min(rows, 4)
    n_programs = max(n_programs, 1)
    dw = torch.zeros(hidden, device=x.device, dtype=torch.float32)
    db = torch.zeros(hidden, device=x.device, dtype=torch.float32) if bias is not None else None
    if rows:
        block_n = triton.next_power_of_2(hidden)
        _add_norm_bwd_kernel[(n_programs,)](
            dout2,
            dres2,
            x2,
            res2,
            weight,
            mean,
            rstd,
            dx,
            dres,
            dw,
            db,
            rows,
            hidden,
            triton.cdiv(rows, n_programs),
            dout2.stride(0),
            dres2.stride(0) if dres2 is not None else 0,
            x2.stride(0),
            res2.stride(0) if res2 is not None else 0,
            IS_RMS_NORM=is_rms_norm,
            HAS_RESIDUAL=res2 is not None,
            HAS_BIAS=bias is not None,
            HAS_DRES_OUT=dres2 is not None,
            BLOCK_N=block_n,
            num_warps=_num_warps(block_n),
        )
    return (
        dx.view(shape),
        dw.to(weight.dtype),
        None if db is None else db.to(bias.dtype),
        None if dres is None else dres.view(shape),
    )


@torch.library.custom_op("mambalab::add_norm_fwd", mutates_args=())
def _add_norm_fwd_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    eps: float,
    is_rms_norm: bool,
    prenorm: bool,
    residual_in_fp32: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _add_norm_fwd(x, weight, bias, residual, eps, is_rms_norm, prenorm, residual_in_fp32)


@_add_norm_fwd_op.register_fake
def _(x, weight, bias, residual, eps, is_rms_norm, prenorm, residual_in_fp32):
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    f32 = dict(dtype=torch.float32)
    res_dtype = torch.float32 if residual_in_fp32 else x.dtype
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        x.new_empty(x.shape if prenorm else (0,), dtype=res_dtype),
        x.new_empty(0 if is_rms_norm else rows, **f32),
        x.new_empty(rows, **f32),
    )


@torch.library.custom_op("mambalab::add_norm_bwd", mutates_args=())
def _add_norm_bwd_op(
    dout: torch.Tensor,
    dres_out: torch.Tensor | None,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    is_rms_norm: bool,
) -> list[torch.Tensor]:
    grads = _add_norm_bwd(dout, dres_out, x, weight, bias, residual, mean, rstd, is_rms_norm)
    return [g if g is not None else x.new_empty(0) for g in grads]


@_add_norm_bwd_op.register_fake
def _(dout, dres_out, x, weight, bias, residual, mean, rstd, is_rms_norm):
    like = lambda t: x.new_empty(0) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)
    return [like(t) for t in (x, weight, bias, residual)]


class _AddNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, residual, eps, is_rms_norm, prenorm, residual_in_fp32):
        out, res_out, mean, rstd = call_op(
            "add_norm_fwd", _add_norm_fwd, x, weight, bias, residual, eps, is_rms_norm, prenorm, residual_in_fp32
        )
        ctx.save_for_backward(x, weight, bias, residual, mean, rstd)
        ctx.is_rms_norm = is_rms_norm
        ctx.prenorm = prenorm
        return out, res_out

    @staticmethod
    def backward(ctx, dout, dres_out):
        x, weight, bias, residual, mean, rstd = ctx.saved_tensors
        dres_out = dres_out if ctx.prenorm else None
        grads = call_op(
            "add_norm_bwd", _add_norm_bwd, dout, dres_out, x, weight, bias, residual, mean, rstd, ctx.is_rms_norm
        )
        present = (x, weight, bias, residual)
        return (*(g if t is not None else None for g, t in zip(grads, present)), None, None, None, None)


def _add_norm(x, weight, bias, residual, eps, prenorm, residual_in_fp32, is_rms_norm):
    tensors = (x, weight, bias, residual)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        out, res_out = _AddNormFn.apply(*tensors, eps, is_rms_norm, prenorm, residual_in_fp32)
    else:
        out, res_out, _, _ = call_op(
            "add_norm_fwd", _add_norm_fwd, *tensors, eps, is_rms_norm, prenorm, residual_in_fp32
        )
    return (out, res_out) if prenorm else out


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
    """`(..., hidden)` -> RMSNorm(x + residual) (x's dtype); with `prenorm` also the new residual (fp32 if
    `residual_in_fp32`, else x's dtype). Same contract as `kernels.rms_norm.ref.rms_norm`."""
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
    """`(..., hidden)` -> LayerNorm(x + residual); same contract as `rms_norm`."""
    return _add_norm(x, weight, bias, residual, eps, prenorm, residual_in_fp32, is_rms_norm=False)
