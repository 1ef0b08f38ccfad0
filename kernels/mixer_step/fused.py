"""The mixer's decode step in two Triton kernels (inference only: updates both states in place, no autograd).

Spec: `kernels/mixer_step/ref.py`. Unfused, the step between in_proj and out_proj is four launches (conv step,
x_proj, dt_proj, SSM step). At batch 1 every kernel is a few microseconds of launch and latency, so the count of
launches sets the decode speed, not the bytes. Here:

1. `_conv_step_project_kernel`, one program per `BLOCK_D` channels of one sequence: the conv step (state shifted in
   place), SiLU, the result stored (the SSM step needs it), and this block's share of x_proj,
   `x_proj_weight[:, block] @ x[block]`, stored as a partial sum `[n_proj]` in fp32.
2. `_project_state_step_kernel`, one program per `BLOCK_D` channels of one sequence: the sum of the partials (x_proj
   needs every channel, so it cannot finish inside kernel 1 without a grid-wide sync; summing a few dozen partials in
   a fixed order is deterministic, unlike atomics), then dt_proj for its own channels, and the SSM step. Below
   batch 16 it loads the state and constants before the sums (`EARLY_LOADS`). From batch 16, where holding the
   state in registers across the sums costs more than its load latency, it only asks for the state and dt_proj rows
   in L2 before its PDL wait (`prefetch_l2`); `kernels/NOTES.md` has the timings of both.

x_proj's output and dt are rounded to x's dtype where the unfused step holds them in a tensor of that dtype, so the
fused step reproduces it (and the prefill path) up to summation order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._triton_utils import empty, pdl, prefetch_l2, wait_for_previous_kernel
from kernels.causal_conv1d.step import _conv_step_rows
from kernels.selective_scan.step import _advance_state_rows, _load_state_rows

__all__ = ["mixer_step"]

_LARGE_BATCH = 16  # from here the grid fills an H100 without help: see `channel_blocks` and EARLY_LOADS


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
    USE_PDL: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    mask_d = offs_d < dim
    # The x_proj tile first: the conv step ends in a barrier, and no load after it can be moved above it.
    offs_p = tl.arange(0, BLOCK_P)  # [BLOCK_P], rows of x_proj
    w = tl.load(
        proj_w_ptr + offs_p[:, None] * stride_proj_w_r + offs_d[None, :],
        mask=(offs_p < n_proj)[:, None] & mask_d[None, :],
        other=0.0,
    )  # [BLOCK_P, BLOCK_D]
    wait_for_previous_kernel(USE_PDL)  # x comes from the kernel before (in_proj)
    x = _conv_step_rows(
        x_ptr, conv_state_ptr, conv_w_ptr, conv_bias_ptr, pid_b, offs_d, mask_d, state_len,
        stride_x_b, stride_state_b, stride_state_d, stride_conv_w_d, WIDTH, HAS_BIAS, True, BLOCK_S,
    )  # fmt: skip
    x = x.to(conv_out_ptr.dtype.element_ty)
    tl.store(conv_out_ptr + pid_b * dim + offs_d, x, mask=mask_d)
    partial = tl.sum(w.to(tl.float32) * x.to(tl.float32)[None, :], axis=1)  # [BLOCK_P]
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
    PARTIAL_CHUNKS: tl.constexpr,
    EARLY_LOADS: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    mask_d = offs_d < dim
    offs_r = tl.arange(0, BLOCK_R)
    offs_n = tl.arange(0, BLOCK_N)
    mask_r = offs_r < dt_rank
    mask_n = offs_n < dstate
    mask_dr = mask_d[:, None] & mask_r[None, :]  # [BLOCK_D, BLOCK_R], the dt_proj rows of these channels
    dtype = conv_out_ptr.dtype.element_ty

    # At small batch, every load that does not depend on x_proj's output comes first (state, constants, z, x,
    # dt_proj rows): the partial sums below end in cross-warp reductions, and no load after those can be moved above
    # them (batch 1: 4.1 -> 3.2 us). At large batch the tiles held across the reductions cost more than the latency
    # they hide (batch 64: 8.6 -> 13.1 us), so the loads stay where they are needed.
    if EARLY_LOADS:
        state_ptrs, mask_dn, state, A, D, z, dt_bias = _load_state_rows(
            ssm_state_ptr, A_ptr, D_ptr, z_ptr, dt_bias_ptr, pid_b, offs_d, mask_d, dstate,
            stride_state_b, stride_state_d, stride_A_d, stride_z_b, HAS_D, HAS_Z, HAS_DT_BIAS, BLOCK_N,
        )  # fmt: skip
        w = tl.load(dt_w_ptr + offs_d.to(tl.int64)[:, None] * stride_dt_w_d + offs_r[None, :], mask=mask_dr, other=0.0)
    if USE_PDL and not EARLY_LOADS:  # the state and dt_proj rows do not come from kernel 1: ask for them now
        channels = tl.minimum(offs_d, dim - 1).to(tl.int64)  # in bounds: a prefetch takes no mask
        prefetch_l2(ssm_state_ptr + pid_b * stride_state_b + channels * stride_state_d)
        prefetch_l2(dt_w_ptr + channels * stride_dt_w_d)
    wait_for_previous_kernel(USE_PDL)  # the partials and x come from the kernel before (kernel 1)
    if EARLY_LOADS:
        x = tl.load(conv_out_ptr + pid_b * dim + offs_d, mask=mask_d, other=0.0).to(tl.float32)

    # x_proj's output for this sequence: the kernel-1 partials summed over the channel blocks, in a fixed order,
    # BLOCK_BLOCKS of them at a time (one chunk up to 2048 channels; more keep the tiles small for wide models).
    dt_in = tl.zeros([BLOCK_R], dtype=tl.float32)
    B = tl.zeros([BLOCK_N], dtype=tl.float32)
    C = tl.zeros([BLOCK_N], dtype=tl.float32)
    for chunk in tl.static_range(PARTIAL_CHUNKS):
        offs_k = chunk * BLOCK_BLOCKS + tl.arange(0, BLOCK_BLOCKS)
        rows = partial_ptr + (pid_b * n_blocks + offs_k[:, None]) * BLOCK_P  # [BLOCK_BLOCKS, 1]
        mask_k = (offs_k < n_blocks)[:, None]
        dt_in += tl.sum(tl.load(rows + offs_r[None, :], mask=mask_k & mask_r[None, :], other=0.0), axis=0)
        B += tl.sum(tl.load(rows + dt_rank + offs_n[None, :], mask=mask_k & mask_n[None, :], other=0.0), axis=0)
        C_rows = rows + dt_rank + dstate + offs_n[None, :]
        C += tl.sum(tl.load(C_rows, mask=mask_k & mask_n[None, :], other=0.0), axis=0)
    dt_in = dt_in.to(dtype).to(tl.float32)  # [BLOCK_R]
    B = B.to(dtype).to(tl.float32)  # [BLOCK_N]
    C = C.to(dtype).to(tl.float32)

    if not EARLY_LOADS:
        w = tl.load(dt_w_ptr + offs_d.to(tl.int64)[:, None] * stride_dt_w_d + offs_r[None, :], mask=mask_dr, other=0.0)
    dt = tl.sum(w.to(tl.float32) * dt_in[None, :], axis=1).to(dtype).to(tl.float32)  # [BLOCK_D], dt_proj
    if not EARLY_LOADS:
        x = tl.load(conv_out_ptr + pid_b * dim + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        state_ptrs, mask_dn, state, A, D, z, dt_bias = _load_state_rows(
            ssm_state_ptr, A_ptr, D_ptr, z_ptr, dt_bias_ptr, pid_b, offs_d, mask_d, dstate,
            stride_state_b, stride_state_d, stride_A_d, stride_z_b, HAS_D, HAS_Z, HAS_DT_BIAS, BLOCK_N,
        )  # fmt: skip
    y = _advance_state_rows(state_ptrs, mask_dn, state, A, D, z, dt_bias, x, dt, B, C, HAS_D, HAS_Z, True)
    tl.store(out_ptr + pid_b * dim + offs_d, y.to(out_ptr.dtype.element_ty), mask=mask_d)


def channel_blocks(dim: int, batch: int) -> tuple[int, int]:
    """Channels per program of kernel 1 (its count of blocks is the number of partials kernel 2 sums) and of
    kernel 2. Kernel 1: enough programs to spread a batch-1 step over the GPU, few enough that the partials stay a
    short list. Kernel 2 takes twice as many channels once the batch fills the GPU anyway (H100, dim 1536, CUDA
    graph: batch 64 12.7 us vs 15.2 at 64 channels; batch 1 5.0 us at 64, 5.9 at 128)."""
    block_d = max(16, min(64, triton.next_power_of_2(triton.cdiv(dim, 32))))
    return block_d, block_d * 2 if batch >= _LARGE_BATCH else block_d


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
    block_d, block_d_state = channel_blocks(dim, batch)
    n_blocks = triton.cdiv(dim, block_d)
    block_blocks = min(32, max(2, triton.next_power_of_2(n_blocks)))
    conv_out = empty(batch, dim, device=x.device, dtype=x.dtype)
    partial = empty(batch, n_blocks, block_p, device=x.device, dtype=torch.float32)
    out = empty(batch, dim, device=x.device, dtype=x.dtype)
    use_pdl = pdl(x.device)
    _conv_step_project_kernel[(n_blocks, batch)](
        x, conv_state, conv_weight, conv_bias, x_proj_weight, conv_out, partial,
        dim, state_len, n_proj,
        x.stride(0), conv_state.stride(0), conv_state.stride(1), conv_weight.stride(0), x_proj_weight.stride(0),
        WIDTH=width, HAS_BIAS=conv_bias is not None, BLOCK_D=block_d, BLOCK_S=block_s, BLOCK_P=block_p,
        USE_PDL=use_pdl, launch_pdl=use_pdl, num_warps=4,
    )  # fmt: skip
    _project_state_step_kernel[(triton.cdiv(dim, block_d_state), batch)](
        partial, conv_out, z, ssm_state, dt_proj_weight, A, D, dt_bias, out,
        dim, dstate, dt_rank, n_blocks,
        z.stride(0) if z is not None else 0, ssm_state.stride(0), ssm_state.stride(1), dt_proj_weight.stride(0),
        A.stride(0),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_DT_BIAS=dt_bias is not None,
        BLOCK_D=block_d_state, BLOCK_N=triton.next_power_of_2(dstate), BLOCK_R=max(2, triton.next_power_of_2(dt_rank)),
        BLOCK_P=block_p, BLOCK_BLOCKS=block_blocks, PARTIAL_CHUNKS=triton.cdiv(n_blocks, block_blocks),
        EARLY_LOADS=batch < _LARGE_BATCH, USE_PDL=use_pdl, launch_pdl=use_pdl,
        num_warps=4,
    )  # fmt: skip
    return out
