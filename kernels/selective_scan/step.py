"""One decoding step of the selective scan in Triton (inference only: updates the state in place, no autograd).

Math (spec: `kernels/selective_scan/ref.py::selective_state_update`), per batch b, channel d, state n::

    dt      = softplus(dt + dt_bias)                          (softplus only with dt_softplus)
    state   = exp(dt * A[d, n]) * state + dt * B[n] * x
    out     = (sum_n C[n] * state[n] + D * x) * silu(z)

One program owns `BLOCK_D` channels of one sequence: it reads their state `[BLOCK_D, DSTATE]` once, writes it back
once, and reads B/C once for all of them. The step is bound by reading and writing the fp32 state.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._triton_utils import empty

__all__ = ["selective_state_update"]


@triton.jit
def _load_state_rows(
    state_ptr, A_ptr, D_ptr, z_ptr, dt_bias_ptr, pid_b, offs_d, mask_d, dstate,
    stride_state_b, stride_state_d, stride_A_d, stride_z_b,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_DT_BIAS: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Everything the step of channels `offs_d` `[BLOCK_D]` of sequence `pid_b` (int64) reads besides x, dt, B, C:
    (state pointers, their mask, state, A `[BLOCK_D, BLOCK_N]`; D, z, dt_bias `[BLOCK_D]`), fp32, zeros where absent.
    Separate from `_advance_state_rows` so a kernel can issue these loads before its own long-latency work (a load
    after a cross-warp reduction cannot be moved above it). Shared with the fused mixer step (`kernels/mixer_step`)."""
    offs_n = tl.arange(0, BLOCK_N)  # [BLOCK_N]
    mask_dn = mask_d[:, None] & (offs_n < dstate)[None, :]
    offs_d64 = offs_d.to(tl.int64)
    state_ptrs = state_ptr + pid_b * stride_state_b + offs_d64[:, None] * stride_state_d + offs_n[None, :]
    state = tl.load(state_ptrs, mask=mask_dn, other=0.0)  # [BLOCK_D, BLOCK_N] fp32
    A = tl.load(A_ptr + offs_d64[:, None] * stride_A_d + offs_n[None, :], mask=mask_dn, other=0.0).to(tl.float32)
    D = tl.zeros(offs_d.shape, dtype=tl.float32)
    z = tl.zeros(offs_d.shape, dtype=tl.float32)
    dt_bias = tl.zeros(offs_d.shape, dtype=tl.float32)
    if HAS_D:
        D = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + pid_b * stride_z_b + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_DT_BIAS:
        dt_bias = tl.load(dt_bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    return state_ptrs, mask_dn, state, A, D, z, dt_bias


@triton.jit
def _advance_state_rows(
    state_ptrs, mask_dn, state, A, D, z, dt_bias, x, dt, B, C,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, DT_SOFTPLUS: tl.constexpr,
):  # fmt: skip
    """The step on what `_load_state_rows` loaded, given x, dt `[BLOCK_D]` and B, C `[BLOCK_N]` in fp32: stores the
    new state rows, returns the gated output `[BLOCK_D]` in fp32."""
    dt += dt_bias
    if DT_SOFTPLUS:
        dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))), dt)
    state = tl.exp(dt[:, None] * A) * state + (dt * x)[:, None] * B[None, :]
    tl.store(state_ptrs, state, mask=mask_dn)
    y = tl.sum(state * C[None, :], axis=1)  # [BLOCK_D]
    if HAS_D:
        y += D * x
    if HAS_Z:
        y *= z * tl.sigmoid(z)
    return y


@triton.jit
def _selective_state_update_kernel(
    state_ptr,
    x_ptr,
    dt_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    dt_bias_ptr,
    out_ptr,
    dim,
    dstate,
    channels_per_group,
    stride_state_b,
    stride_state_d,
    stride_x_b,
    stride_dt_b,
    stride_z_b,
    stride_A_d,
    stride_B_b,
    stride_B_g,
    stride_C_b,
    stride_C_g,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_DT_BIAS: tl.constexpr,
    DT_SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    offs_n = tl.arange(0, BLOCK_N)  # [BLOCK_N]
    mask_d = offs_d < dim
    mask_n = offs_n < dstate
    group = (pid_d * BLOCK_D) // channels_per_group

    x = tl.load(x_ptr + pid_b * stride_x_b + offs_d, mask=mask_d, other=0.0).to(tl.float32)  # [BLOCK_D]
    dt = tl.load(dt_ptr + pid_b * stride_dt_b + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    B = tl.load(B_ptr + pid_b * stride_B_b + group * stride_B_g + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    C = tl.load(C_ptr + pid_b * stride_C_b + group * stride_C_g + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    state_ptrs, mask_dn, state, A, D, z, dt_bias = _load_state_rows(
        state_ptr, A_ptr, D_ptr, z_ptr, dt_bias_ptr, pid_b, offs_d, mask_d, dstate,
        stride_state_b, stride_state_d, stride_A_d, stride_z_b, HAS_D, HAS_Z, HAS_DT_BIAS, BLOCK_N,
    )  # fmt: skip
    y = _advance_state_rows(state_ptrs, mask_dn, state, A, D, z, dt_bias, x, dt, B, C, HAS_D, HAS_Z, DT_SOFTPLUS)
    tl.store(out_ptr + pid_b * dim + offs_d, y.to(out_ptr.dtype.element_ty), mask=mask_d)


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    *,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """One step; same contract as the reference. Updates `state` `(batch, dim, dstate)` fp32 in place.

    x, dt, z: `(batch, dim)`; A `(dim, dstate)`; B, C `(batch, dstate)` or `(batch, groups, dstate)`; D, dt_bias
    `(dim,)`. Returns out `(batch, dim)` in x's dtype.
    """
    batch, dim, dstate = state.shape
    if state.stride(-1) != 1:
        raise ValueError("state must have last-dim stride 1 (it is updated in place)")
    x, dt, A, B, C = (t if t.stride(-1) == 1 else t.contiguous() for t in (x, dt, A, B, C))
    z = z if z is None or z.stride(-1) == 1 else z.contiguous()
    groups = 1 if B.dim() == 2 else B.shape[1]
    gB = (B.stride(1) if B.dim() == 3 else 0, C.stride(1) if C.dim() == 3 else 0)
    per_group = dim // groups
    block_n = triton.next_power_of_2(dstate)
    block_d = max(1, min(triton.next_power_of_2(dim), 4096 // block_n, 64))
    while groups > 1 and per_group % block_d:
        block_d //= 2
    out = empty(batch, dim, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(dim, block_d), batch)
    _selective_state_update_kernel[grid](
        state,
        x,
        dt,
        A,
        B,
        C,
        D,
        z,
        dt_bias,
        out,
        dim,
        dstate,
        per_group,
        state.stride(0),
        state.stride(1),
        x.stride(0),
        dt.stride(0),
        z.stride(0) if z is not None else 0,
        A.stride(0),
        B.stride(0),
        gB[0],
        C.stride(0),
        gB[1],
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_DT_BIAS=dt_bias is not None,
        DT_SOFTPLUS=dt_softplus,
        BLOCK_D=block_d,
        BLOCK_N=block_n,
        num_warps=4,
    )
    return out
