"""The mixer's decode step in two Triton kernels (inference only: updates both states in place, no autograd).

Spec: `kernels/mixer_step/ref.py`. Unfused, the step between in_proj and out_proj is five launches (conv step,
x_proj, dt_proj, SSM step, and the conv's output round trip). At batch 1 every kernel is a few microseconds of launch
and latency, so the count of launches sets the decode speed, not the bytes. Here:

1. `_conv_step_project_kernel`, one program per `BLOCK_D` channels of one sequence: the conv step (state shifted in
   place), SiLU, the result stored (the SSM step needs it), and this block's share of x_proj,
   `x_proj_weight[:, block] @ x[block]`, stored as a partial sum `[n_proj]` in fp32.
2. `_project_state_step_kernel`, one program per `BLOCK_D` channels of one sequence: the sum of the partials (x_proj
   needs every channel, so it cannot finish inside kernel 1 without a grid-wide sync; summing a few dozen partials in
   a fixed order is deterministic, unlike atomics), then dt_proj for its own channels, and the SSM step.

x_proj's output and dt are rounded to x's dtype where the unfused step holds them in a tensor of that dtype, so the
fused step reproduces it (and the prefill path) up to summation order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._triton_utils import empty
from kernels.causal_conv1d.step import _conv_step_rows
from kernels.selective_scan.step import _channel_constants, _state_step_rows

__all__ = ["mixer_step"]

_MIN_PROGRAMS = 264  # two per SM on an H100


@triton.jit
def _conv_step_project_kernel(
    x_ptr,
    conv_state_ptr,
    conv_w_ptr,
    conv_bias_ptr,
    proj_w_ptr,
    conv_out_ptr,
    partial_ptr,
    dim,
    state_len,
    n_proj,
    stride_x_b,
    stride_state_b,
    stride_state_d,
    stride_conv_w_d,
    stride_proj_w_r,
    WIDTH: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_P: tl.constexpr,
    SUB_BLOCKS: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_p = tl.arange(0, BLOCK_P)  # [BLOCK_P], rows of x_proj
    partial = tl.zeros([BLOCK_P], dtype=tl.float32)
    # SUB_BLOCKS blocks of BLOCK_D channels, one partial sum for all of them: at large batch fewer, longer programs
    # leave kernel 2 fewer partials to read (each of its programs reads all of its sequence's).
    for sub in range(SUB_BLOCKS):
        offs_d = (pid_d * SUB_BLOCKS + sub) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
        mask_d = offs_d < dim
        x = _conv_step_rows(
            x_ptr, conv_state_ptr, conv_w_ptr, conv_bias_ptr, pid_b, offs_d, mask_d, state_len,
            stride_x_b, stride_state_b, stride_state_d, stride_conv_w_d, WIDTH, HAS_BIAS, True, BLOCK_S,
        )  # fmt: skip
        x = x.to(conv_out_ptr.dtype.element_ty)
        tl.store(conv_out_ptr + pid_b * dim + offs_d, x, mask=mask_d)
        w = tl.load(
            proj_w_ptr + offs_p[:, None] * stride_proj_w_r + offs_d[None, :],
            mask=(offs_p < n_proj)[:, None] & mask_d[None, :],
            other=0.0,
        )  # [BLOCK_P, BLOCK_D]
        partial += tl.sum(w.to(tl.float32) * x.to(tl.float32)[None, :], axis=1)  # [BLOCK_P]
    tl.store(partial_ptr + (pid_b * tl.num_programs(0) + pid_d) * BLOCK_P + offs_p, partial)


@triton.jit
def _project_state_step_kernel(
    partial_ptr,
    conv_out_ptr,
    z_ptr,
    ssm_state_ptr,
    dt_w_ptr,
    A_ptr,
    D_ptr,
    dt_bias_ptr,
    out_ptr,
    batch,
    dim,
    dstate,
    dt_rank,
    n_blocks,
    stride_z_b,
    stride_state_b,
    stride_state_d,
    stride_dt_w_d,
    stride_A_d,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_DT_BIAS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_BLOCKS: tl.constexpr,
    ROWS: tl.constexpr,
):
    pid_d = tl.program_id(0)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    mask_d = offs_d < dim
    offs_r = tl.arange(0, BLOCK_R)
    mask_r = offs_r < dt_rank

    # The channels' constants and dt_proj rows, once for the ROWS sequences of this program.
    A, D, dt_bias = _channel_constants(
        A_ptr, D_ptr, dt_bias_ptr, offs_d, mask_d, dstate, stride_A_d, HAS_D, HAS_DT_BIAS, BLOCK_N
    )
    dt_w = tl.load(
        dt_w_ptr + offs_d.to(tl.int64)[:, None] * stride_dt_w_d + offs_r[None, :],
        mask=mask_d[:, None] & mask_r[None, :],
        other=0.0,
    ).to(tl.float32)  # [BLOCK_D, BLOCK_R]
    for i in tl.static_range(ROWS):  # unrolled: the rows are independent, so their loads can overlap
        row = tl.program_id(1).to(tl.int64) * ROWS + i
        y = _project_state_step_row(
            partial_ptr, conv_out_ptr, z_ptr, ssm_state_ptr, row, row < batch, offs_d, mask_d, dt_w, A, D, dt_bias,
            dim, dstate, dt_rank, n_blocks, stride_z_b, stride_state_b, stride_state_d,
            HAS_D, HAS_Z, BLOCK_N, BLOCK_R, BLOCK_P, BLOCK_BLOCKS,
        )  # fmt: skip
        tl.store(out_ptr + row * dim + offs_d, y.to(out_ptr.dtype.element_ty), mask=mask_d & (row < batch))


@triton.jit
def _project_state_step_row(
    partial_ptr, conv_out_ptr, z_ptr, ssm_state_ptr, row, row_ok, offs_d, mask_d, dt_w, A, D, dt_bias,
    dim, dstate, dt_rank, n_blocks, stride_z_b, stride_state_b, stride_state_d,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_BLOCKS: tl.constexpr,
):  # fmt: skip
    """Sequence `row` (nothing read or written unless `row_ok`), channels `offs_d` where `mask_d`: x_proj's output
    from the kernel-1 partials, dt_proj, the SSM step. Returns the gated output `[BLOCK_D]` in fp32."""
    dtype = conv_out_ptr.dtype.element_ty
    offs_r = tl.arange(0, BLOCK_R)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = mask_d & row_ok
    mask_r = (offs_r < dt_rank) & row_ok
    mask_n = (offs_n < dstate) & row_ok

    # x_proj's output for this sequence: the partials summed over the channel blocks, in a fixed order.
    offs_k = tl.arange(0, BLOCK_BLOCKS)
    rows = partial_ptr + (row * n_blocks + offs_k[:, None]) * BLOCK_P  # [BLOCK_BLOCKS, 1]
    mask_k = (offs_k < n_blocks)[:, None]
    dt_in = tl.sum(tl.load(rows + offs_r[None, :], mask=mask_k & mask_r[None, :], other=0.0), axis=0)
    B = tl.sum(tl.load(rows + dt_rank + offs_n[None, :], mask=mask_k & mask_n[None, :], other=0.0), axis=0)
    C = tl.sum(tl.load(rows + dt_rank + dstate + offs_n[None, :], mask=mask_k & mask_n[None, :], other=0.0), axis=0)
    dt_in = dt_in.to(dtype).to(tl.float32)  # [BLOCK_R], rounded where the unfused step has a tensor of x's dtype
    B = B.to(dtype).to(tl.float32)  # [BLOCK_N]
    C = C.to(dtype).to(tl.float32)

    dt = tl.sum(dt_w * dt_in[None, :], axis=1).to(dtype).to(tl.float32)  # [BLOCK_D], dt_proj of these channels
    x = tl.load(conv_out_ptr + row * dim + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    return _state_step_rows(
        ssm_state_ptr, z_ptr, row, offs_d, mask_d, x, dt, B, C, A, D, dt_bias, dstate,
        stride_state_b, stride_state_d, stride_z_b, HAS_D, HAS_Z, True, BLOCK_N,
    )  # fmt: skip


def _largest_split(programs: int, *, limit: int) -> int:
    """The largest power of two <= `limit` that folds `programs` into as few programs while leaving at least
    `_MIN_PROGRAMS` of them (1 when there are not that many to begin with)."""
    split = 1
    while split * 2 <= limit and programs // (split * 2) >= _MIN_PROGRAMS:
        split *= 2
    return split


def mixer_step(
    x: torch.Tensor,
    z: torch.Tensor | None,
    conv_state: torch.Tensor,
    ssm_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    x_proj_weight: torch.Tensor,
    dt_proj_weight: torch.Tensor,
    A: torch.Tensor,
    D: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
) -> torch.Tensor:
    """Same contract as the reference (shapes there). Both states must have unit stride on their last dim; every
    other tensor needs unit stride on its last dim only (the mixer's in_proj halves are strided views)."""
    batch, dim = x.shape
    state_len, width = conv_state.shape[2], conv_weight.shape[1]
    dstate, dt_rank, n_proj = ssm_state.shape[2], dt_proj_weight.shape[1], x_proj_weight.shape[0]

    block_s = triton.next_power_of_2(state_len)
    block_p = triton.next_power_of_2(n_proj)
    block_d = max(16, min(64, triton.next_power_of_2(triton.cdiv(dim, 32))))
    # Kernel 1: with many sequences, several channel blocks per program (fewer partials for kernel 2 to read) while
    # the grid still fills the GPU. Kernel 2: likewise several sequences per program, which then load the channel
    # constants and dt_proj rows once. At batch 1 both stay at one block and one sequence per program.
    sub_blocks = _largest_split(triton.cdiv(dim, block_d) * batch, limit=4)
    n_blocks = triton.cdiv(dim, block_d * sub_blocks)
    rows = _largest_split(triton.cdiv(dim, block_d) * batch, limit=4)
    conv_out = empty(batch, dim, device=x.device, dtype=x.dtype)
    partial = empty(batch, n_blocks, block_p, device=x.device, dtype=torch.float32)
    out = empty(batch, dim, device=x.device, dtype=x.dtype)
    _conv_step_project_kernel[(n_blocks, batch)](
        x, conv_state, conv_weight, conv_bias, x_proj_weight, conv_out, partial,
        dim, state_len, n_proj,
        x.stride(0), conv_state.stride(0), conv_state.stride(1), conv_weight.stride(0), x_proj_weight.stride(0),
        WIDTH=width, HAS_BIAS=conv_bias is not None, BLOCK_D=block_d, BLOCK_S=block_s, BLOCK_P=block_p,
        SUB_BLOCKS=sub_blocks, num_warps=4,
    )  # fmt: skip
    _project_state_step_kernel[(triton.cdiv(dim, block_d), triton.cdiv(batch, rows))](
        partial, conv_out, z, ssm_state, dt_proj_weight, A, D, dt_bias, out,
        batch, dim, dstate, dt_rank, n_blocks,
        z.stride(0) if z is not None else 0, ssm_state.stride(0), ssm_state.stride(1), dt_proj_weight.stride(0),
        A.stride(0),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DT_BIAS=dt_bias is not None,
        BLOCK_D=block_d, BLOCK_N=triton.next_power_of_2(dstate), BLOCK_R=max(2, triton.next_power_of_2(dt_rank)),
        BLOCK_P=block_p, BLOCK_BLOCKS=max(2, triton.next_power_of_2(n_blocks)), ROWS=rows, num_warps=4,
    )  # fmt: skip
    return out
