"""The mixer's input and output projections in channel-major memory, the layout the kernels read fastest.

The scan keeps a short run of time steps of each channel inside one thread, so it reads best when each channel's
steps are adjacent in memory ("time-major"). A plain `nn.Linear` over `[B, L, D]` gives the opposite,
`[B, L, channels]` (channel-last), and a transpose to time-major costs a strided copy of every activation in the
forward and again in the backward. So, as mamba-ssm does, the mixer keeps its sequences as `[channels, B * L]`
matrices ("channel-major"):

    x, z   = W_in[:d_inner] @ hidden^T, W_in[d_inner:] @ hidden^T      [d_inner, B L] each, from [B L, D]
    out    = y^T @ W_out^T                                              [B L, D]   from y [d_inner, B L]

Viewed as `(batch, channels, seqlen)` these have strides `(L, B L, 1)`: time is contiguous, which the kernels take
as they are (their outputs and gradients keep the layout, see `kernels._triton_utils.empty_sequence`). The two
autograd Functions below only exist so that the gradients also come out in the layout their consumer wants, with no
copy: d hidden as a contiguous `[B, L, D]` (for the norm's backward kernel) and dy as a channel-major matrix (for the
scan's backward kernel); autograd's own matmul backward would hand both over transposed.

Mixed precision: the GEMMs run in the autocast dtype when autocast is on (like `F.linear` does), else in the
activations' dtype; the weight gradients come out of their GEMMs in the weights' own dtype (fp32 straight from the
accumulator on CUDA, see `matmul_in`).
"""

from __future__ import annotations

import torch

__all__ = [
    "add_matmul_",
    "channel_major_matrix",
    "compute_dtype",
    "from_channel_major",
    "in_projection",
    "matmul_in",
    "out_projection",
    "x_projection",
]


def channel_major_matrix(seq: torch.Tensor) -> torch.Tensor:
    """`(batch, channels, seqlen)` -> `[channels, batch * seqlen]`; a view when `seq` is channel-major memory (the
    projections' outputs and the kernels' outputs for channel-major inputs), else a copy."""
    return seq.transpose(0, 1).reshape(seq.shape[1], -1)


def from_channel_major(matrix: torch.Tensor, batch: int) -> torch.Tensor:
    """`[channels, batch * seqlen]` (rows may be a slice of a taller matrix) -> `(batch, channels, seqlen)` view."""
    return matrix.unflatten(1, (batch, -1)).transpose(0, 1)


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on `t` runs in: the autocast dtype of `t`'s device when autocast is on, else `t.dtype`."""
    device_type = t.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return t.dtype


def _mixed_precision_gemm(a: torch.Tensor, out_dtype: torch.dtype) -> bool:
    # cuBLAS can write a half-precision GEMM's fp32 accumulator as it is (torch's `out_dtype`, CUDA only). Under
    # torch.compile the plain form is traced instead: inductor fuses the cast itself.
    return (
        a.is_cuda
        and a.dtype in (torch.float16, torch.bfloat16)
        and out_dtype == torch.float32
        and not torch.compiler.is_compiling()
    )


def matmul_in(
    a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """`a @ b` `[M, N]` returned in `out_dtype` (e.g. an fp32 weight gradient from bf16 activations): on CUDA the GEMM
    writes its fp32 accumulator directly, instead of a bf16 product that is then cast (two more passes). With `out`
    (contiguous, `out_dtype`; e.g. a row block of a larger gradient) the product is written there."""
    if _mixed_precision_gemm(a, out_dtype):
        return torch.mm(a, b, out_dtype=out_dtype, out=out)  # out=None: the overload that allocates
    if out is not None:
        return out.copy_(a @ b)
    return (a @ b).to(out_dtype)


def add_matmul_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`acc += a @ b` in place, `acc` in fp32 and a, b in the compute dtype: on CUDA one GEMM accumulates into `acc`
    (no half-precision product written, read back and added)."""
    if _mixed_precision_gemm(a, acc.dtype):
        return torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
    return acc.add_(a @ b)


class _InProjection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        batch, seqlen, d_model = hidden.shape
        d_inner = weight.shape[0] // 2
        dtype = compute_dtype(hidden)
        rows = hidden.reshape(batch * seqlen, d_model).to(dtype)  # [B L, D]
        w = weight.to(dtype)
        with torch.autocast(hidden.device.type, enabled=False):
            x = w[:d_inner] @ rows.t()  # [d_inner, B L]; cuBLAS reads rows^T in place
            z = w[d_inner:] @ rows.t()
            if bias is not None:
                b = bias.to(dtype)
                x += b[:d_inner, None]
                z += b[d_inner:, None]
        ctx.save_for_backward(rows, w)
        ctx.shape, ctx.has_bias, ctx.weight_dtype = (batch, seqlen, d_model), bias is not None, weight.dtype
        return from_channel_major(x, batch), from_channel_major(z, batch)

    @staticmethod
    def backward(ctx, dx: torch.Tensor, dz: torch.Tensor):
        rows, w = ctx.saved_tensors
        batch, seqlen, d_model = ctx.shape
        d_inner = w.shape[0] // 2
        dx, dz = (channel_major_matrix(g).to(w.dtype) for g in (dx, dz))  # [d_inner, B L]
        with torch.autocast(rows.device.type, enabled=False):
            dhidden = dx.t() @ w[:d_inner]  # [B L, D], contiguous
            dhidden.addmm_(dz.t(), w[d_inner:])
            # Each GEMM writes its half of dW in place (a cat of two halves was a 16 MB copy per layer at 370M).
            dweight = rows.new_empty(2 * d_inner, d_model, dtype=ctx.weight_dtype)  # [2 d_inner, D]
            for g, half in zip((dx, dz), dweight.chunk(2), strict=True):
                matmul_in(g, rows, ctx.weight_dtype, out=half)
            dbias = torch.cat([dx.sum(1), dz.sum(1)]) if ctx.has_bias else None
        return dhidden.view(batch, seqlen, d_model), dweight, dbias


class _OutProjection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        batch, _, seqlen = y.shape
        dtype = compute_dtype(y)
        y_rows = channel_major_matrix(y).to(dtype)  # [d_inner, B L]
        w = weight.to(dtype)
        with torch.autocast(y.device.type, enabled=False):
            out = y_rows.t() @ w.t()  # [B L, D]
            if bias is not None:
                out += bias.to(dtype)
        ctx.save_for_backward(y_rows, w)
        ctx.batch, ctx.has_bias, ctx.weight_dtype = batch, bias is not None, weight.dtype
        return out.view(batch, seqlen, -1)

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        y_rows, w = ctx.saved_tensors
        dout = dout.reshape(-1, dout.shape[-1]).to(w.dtype)  # [B L, D]
        with torch.autocast(y_rows.device.type, enabled=False):
            dy = w.t() @ dout.t()  # [d_inner, B L]: channel-major, as the scan's backward reads it
            dweight = matmul_in(dout.t(), y_rows.t(), ctx.weight_dtype)  # [D, d_inner]
            dbias = dout.sum(0) if ctx.has_bias else None
        return from_channel_major(dy, ctx.batch), dweight, dbias


class _XProjection(torch.autograd.Function):
    # Returns x itself beside x_proj(x) so that x's two gradients (from the scan, which consumes the returned x, and
    # from x_proj) meet in this node's backward, where one GEMM with beta = 1 sums them. Left to autograd, the x_proj
    # GEMM writes its own [d_inner, B L] gradient and a separate kernel adds the two (1.1 ms of a 130M step on an
    # H100: benchmarks/results/profile_train_step_130M_fused_loss_*.md).
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, sum_into_downstream_grad: bool):
        dtype = compute_dtype(x)
        x_rows = channel_major_matrix(x).to(dtype)  # [d_inner, B L]
        w = weight.to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            x_dbl = w @ x_rows  # [R, B L]
        ctx.save_for_backward(x_rows, w)
        ctx.batch, ctx.x_dtype, ctx.weight_dtype = x.shape[0], x.dtype, weight.dtype
        ctx.sum_into_downstream_grad = sum_into_downstream_grad
        return x, x_dbl  # autograd hands x back as a view with this node as its grad_fn

    @staticmethod
    def backward(ctx, dx_scan: torch.Tensor | None, dx_dbl: torch.Tensor | None):
        x_rows, w = ctx.saved_tensors
        want_dx, want_dweight = ctx.needs_input_grad[:2]
        if dx_dbl is None:  # x_proj's output did not reach the loss
            return dx_scan, None, None
        dx_dbl = dx_dbl.to(w.dtype)
        dx = dweight = None
        with torch.autocast(x_rows.device.type, enabled=False):
            if want_dweight:
                dweight = matmul_in(dx_dbl, x_rows.t(), ctx.weight_dtype)  # [R, d_inner]
            if want_dx and dx_scan is None:
                dx = w.t() @ dx_dbl
            elif want_dx:  # dx_scan + w^T dx_dbl in one GEMM (beta = 1)
                dx_scan = channel_major_matrix(dx_scan)  # [d_inner, B L]
                if ctx.sum_into_downstream_grad and dx_scan.dtype == w.dtype and dx_scan.is_contiguous():
                    dx = dx_scan.addmm_(w.t(), dx_dbl)
                else:  # into a new tensor: cuBLAS first copies dx_scan there (a 67 MB copy per layer at 370M)
                    dx = torch.addmm(dx_scan.to(w.dtype), w.t(), dx_dbl)
        if dx is not None:
            dx = from_channel_major(dx, ctx.batch).to(ctx.x_dtype)
        return dx, dweight, None


def x_projection(
    x: torch.Tensor, weight: torch.Tensor, *, sum_into_downstream_grad: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` `(B, d_inner, L)`, `weight` `[R, d_inner]` -> `(x, weight @ x as a [R, B L] matrix)`.

    Use the returned `x` (same values and memory) downstream in place of the input: x's gradient from downstream and
    the one through x_proj are then summed inside x_proj's backward GEMM. Follows autocast like `F.linear`.

    `sum_into_downstream_grad`: the backward adds x_proj's part into the incoming downstream gradient in place
    instead of into a new tensor (which saves cuBLAS a copy of it). Autograd may hand one gradient tensor to several
    nodes (an addition's backward passes its input gradient to both operands), so this is only for a returned `x`
    with a single consumer whose backward makes a new gradient tensor: in the mixer, the scan.
    """
    return _XProjection.apply(x, weight, sum_into_downstream_grad)


def in_projection(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """`hidden` `[B, L, D]`, `weight` `[2 d_inner, D]` -> `(x, z)`, each `(B, d_inner, L)` in channel-major memory.

    Equals `F.linear(hidden, weight, bias).transpose(1, 2).chunk(2, dim=1)`.
    """
    return _InProjection.apply(hidden, weight, bias)


def out_projection(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`y` `(B, d_inner, L)` (channel-major memory avoids a copy), `weight` `[D, d_inner]` -> `[B, L, D]`.

    Equals `F.linear(y.transpose(1, 2), weight, bias)`.
    """
    return _OutProjection.apply(y, weight, bias)
