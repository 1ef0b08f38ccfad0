"""Decode linears in Triton: a GEMV per row, optionally behind a fused residual add + RMSNorm.

Spec: `kernels/decode_linear/ref.py`. At batch 1 a 130M model's in_proj (768 -> 3072) and out_proj (1536 -> 768) are
matrix-vector products that should take about as long as reading their weights (4.7 and 2.4 MB: ~1.5 and ~0.8 us on an
H100). cuBLAS runs them as tensor-core GEMMs with 64-row tiles, i.e. only 48 and 12 thread blocks: 3.5 and 4.2 us
(CUDA-graph timing of the op alone; ~4.6 us each in the model's profile).
Here every program owns `BLOCK_N` whole weight rows (a tile of ~4096 elements) and one input row, issues all its loads
at once and reduces: one memory round trip, spread over several hundred programs. (A first version looped over K in
256-wide chunks, with a separate pass for the norm statistics: its chain of dependent loads made it slower than
cuBLAS, 6.2 us.) The norm is a prologue: each program recomputes the row's statistics (K values, from L2), which is
cheaper than a kernel launch; program 0 of each row writes the new residual.

For more than `MAX_ROWS` rows the GEMV would re-read the weights per row. From there up to `MAX_MMA_ROWS` rows of a
16-bit input (batched decoding, e.g. batch 64), `_few_rows_matmul_kernel` multiplies on the tensor cores in tiles of
`MMA_CONFIG` (64 rows x 32 columns, K in steps of 128, 4 stages: the fastest of 31 tile configs, H100). Alone, with
its weights in L2, it takes 3.3 / 4.5 us for the 130M in_proj / out_proj at 64 rows against cuBLAS's 3.7 / 4.3; in
the model, weights cold, it is no faster than cuBLAS (batch-64 decode, LM head included: 0.733 vs 0.726 ms per
step). It is here for the launch chain: with every decode kernel ours, each starts under programmatic dependent
launch while the one before it finishes (`kernels._triton_utils.pdl`), and a cuBLAS GEMM would break that chain
twice per layer (with PDL: 0.706 ms per step, against 0.710 with cuBLAS; `kernels/NOTES.md`, session 10). Past
`MAX_MMA_ROWS` rows, for fp32 inputs, and for GEMV rows longer than `MAX_K`, the launchers hand over to the fused
norm kernel and cuBLAS, which are the right tools for a real GEMM.

Under PDL the GEMV issues its weight loads before it waits for the previous kernel (they do not depend on it), so
the biggest read of a batch-1 step overlaps the kernel before. The tensor-core kernel cannot hold its weight tiles in
registers across the wait (its K loop streams them), so it asks for them in L2 instead (`prefetch_l2`: one pointer per
128-byte line of its weight rows) and reads them from there after the wait.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._triton_utils import empty, pdl, prefetch_l2, wait_for_previous_kernel
from kernels.decode_linear import ref
from kernels.rms_norm.fused import rms_norm

__all__ = ["MAX_MMA_ROWS", "MAX_ROWS", "MMA_CONFIG", "decode_linear", "decode_rms_norm_linear"]

# H100, 130M in_proj / out_proj: 1 row 2.4 / 2.4 us vs cuBLAS 3.5 / 4.2; 2 rows 3.1 / 2.5 vs 3.4 / 4.2;
# 4 rows 4.9 / 3.1 vs 3.4 / 4.2 (in_proj loses); 8 rows 8.1 / 5.1 vs 3.4 / 4.2.
MAX_ROWS = 2
MAX_K = 8192  # one program holds a whole row of the input
_TILE = 4096  # weight elements per program: 32 fp32 registers per thread at 4 warps
MAX_MMA_ROWS = 64
MMA_CONFIG = dict(BLOCK_M=64, BLOCK_N=32, BLOCK_K=128, num_warps=4, num_stages=4)


@triton.jit
def _decode_linear_kernel(
    x_ptr,
    residual_ptr,
    norm_w_ptr,
    w_ptr,
    bias_ptr,
    out_ptr,
    residual_out_ptr,
    K,
    N,
    eps,
    stride_x_row,
    stride_residual_row,
    stride_w_n,
    NORM: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pid_n = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    offs_k = tl.arange(0, BLOCK_K)  # [BLOCK_K], the whole row (K <= BLOCK_K)
    mask_n = offs_n < N
    mask_k = offs_k < K

    # Every load is issued up front, weights first: at these sizes the kernel is one memory round trip.
    w = tl.load(
        w_ptr + offs_n.to(tl.int64)[:, None] * stride_w_n + offs_k[None, :],
        mask=mask_n[:, None] & mask_k[None, :],
        other=0.0,
    )  # [BLOCK_N, BLOCK_K]
    wait_for_previous_kernel(USE_PDL)  # the weights are loading; the row comes from the kernel before
    xk = tl.load(x_ptr + row * stride_x_row + offs_k, mask=mask_k, other=0.0).to(tl.float32)  # [BLOCK_K]
    if NORM:
        if HAS_RESIDUAL:
            xk += tl.load(residual_ptr + row * stride_residual_row + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        norm_w = tl.load(norm_w_ptr + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        if pid_n == 0:
            tl.store(residual_out_ptr + row * K + offs_k, xk.to(residual_out_ptr.dtype.element_ty), mask=mask_k)
        rstd = 1.0 / tl.sqrt(tl.sum(xk * xk, axis=0) / K + eps)
        # The normed row in x's dtype, as the unfused norm hands it to the matmul.
        xk = (xk * rstd * norm_w).to(x_ptr.dtype.element_ty).to(tl.float32)
    out = tl.sum(w.to(tl.float32) * xk[None, :], axis=1)  # [BLOCK_N]
    if HAS_BIAS:
        out += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * N + offs_n, out.to(out_ptr.dtype.element_ty), mask=mask_n)


@triton.jit
def _few_rows_matmul_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    out_ptr,
    M,
    K,
    N,
    stride_x_row,
    stride_w_n,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    USE_PDL: tl.constexpr,
    PREFETCH_LINES: tl.constexpr,
):
    """out `[M, N]` = x `[M, K]` @ w `[N, K]`^T (+ bias), one `[BLOCK_M, BLOCK_N]` tile per program, fp32 accumulator;
    w is cast to x's dtype, as the reference does."""
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    mask_m = offs_m < M
    mask_n = offs_n < N
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_x_row  # [BLOCK_M, 1]
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_w_n  # [BLOCK_N, 1]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if USE_PDL:  # the weights do not come from the kernel before: ask for them now
        per_line = 1024 // w_ptr.dtype.element_ty.primitive_bitwidth  # elements in 128 bytes
        lines = tl.minimum(tl.arange(0, PREFETCH_LINES) * per_line, K - 1)
        rows = tl.minimum(offs_n, N - 1).to(tl.int64)[:, None] * stride_w_n  # in bounds: no mask on a prefetch
        prefetch_l2(w_ptr + rows + lines[None, :])  # [BLOCK_N, PREFETCH_LINES], one pointer per 128-byte line
    wait_for_previous_kernel(USE_PDL)  # x comes from the kernel before
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)  # [BLOCK_K]
        mask_k = offs_k < K
        x = tl.load(x_rows + offs_k[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w = tl.load(w_rows + offs_k[None, :], mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        acc = tl.dot(x, tl.trans(w.to(x.dtype)), acc)  # [BLOCK_M, BLOCK_N]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


def _few_rows_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    rows, K = x.shape
    N = weight.shape[0]
    cfg = dict(MMA_CONFIG)
    block_m, block_n = cfg.pop("BLOCK_M"), cfg.pop("BLOCK_N")
    use_pdl = pdl(x.device)
    out = empty(rows, N, device=x.device, dtype=x.dtype)
    _few_rows_matmul_kernel[(triton.cdiv(N, block_n), triton.cdiv(rows, block_m))](
        x, weight, bias, out, rows, K, N, x.stride(0), weight.stride(0),
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, USE_PDL=use_pdl, launch_pdl=use_pdl,
        PREFETCH_LINES=_prefetch_lines(K, weight.element_size()), **cfg,
    )  # fmt: skip
    return out


def _prefetch_lines(K: int, element_size: int) -> int:
    """128-byte lines in a weight row of K elements, as a power of two (a constexpr tile size)."""
    return triton.next_power_of_2(triton.cdiv(K * element_size, 128))


def _uses_tensor_cores(x: torch.Tensor) -> bool:
    """Whether `decode_linear` takes `_few_rows_matmul_kernel` for this input (else the GEMV or cuBLAS)."""
    return MAX_ROWS < x.shape[0] <= MAX_MMA_ROWS and x.dtype in (torch.bfloat16, torch.float16)


def _launch(x, weight, bias, *, norm_weight=None, residual=None, residual_out=None, eps=0.0):
    rows, K = x.shape
    N = weight.shape[0]
    block_k = triton.next_power_of_2(K)
    block_n = max(1, min(32, _TILE // block_k))  # a [BLOCK_N, BLOCK_K] weight tile of about _TILE elements
    use_pdl = pdl(x.device)
    out = empty(rows, N, device=x.device, dtype=x.dtype)
    _decode_linear_kernel[(triton.cdiv(N, block_n), rows)](
        x, residual, norm_weight, weight, bias, out, residual_out,
        K, N, eps, x.stride(0), residual.stride(0) if residual is not None else 0, weight.stride(0),
        NORM=norm_weight is not None, HAS_RESIDUAL=residual is not None, HAS_BIAS=bias is not None,
        BLOCK_N=block_n, BLOCK_K=block_k, USE_PDL=use_pdl, launch_pdl=use_pdl, num_warps=4 if block_k <= _TILE else 8,
    )  # fmt: skip
    return out


def decode_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Same contract as the reference. Up to `MAX_ROWS` rows of up to `MAX_K`: the GEMV kernel; up to `MAX_MMA_ROWS`
    rows of bf16/fp16: the tensor-core kernel; else cuBLAS."""
    if _uses_tensor_cores(x):  # it loops over K, so any row length
        return _few_rows_matmul(x, weight, bias)
    if x.shape[0] > MAX_ROWS or x.shape[1] > MAX_K:
        return ref.decode_linear(x, weight, bias)  # F.linear, i.e. cuBLAS on a GPU
    return _launch(x, weight, bias)


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
    """Same contract as the reference. Up to `MAX_ROWS` rows of up to `MAX_K`: one kernel; else the fused norm kernel,
    then `decode_linear`."""
    if x.shape[0] > MAX_ROWS or x.shape[1] > MAX_K:
        normed, residual = rms_norm(
            x, norm_weight, None, residual, eps=eps, prenorm=True, residual_in_fp32=residual_in_fp32
        )
        return decode_linear(normed, weight, bias), residual
    residual_out = empty(*x.shape, device=x.device, dtype=torch.float32 if residual_in_fp32 else x.dtype)
    out = _launch(x, weight, bias, norm_weight=norm_weight, residual=residual, residual_out=residual_out, eps=eps)
    return out, residual_out
