"""One decoding step of the causal conv1d in Triton (inference only: updates `conv_state` in place, no autograd).

Math (spec: `kernels/causal_conv1d/ref.py::causal_conv1d_update`), per channel d with state length S >= W - 1::

    out        = act(bias + sum_{k<W-1} w[k] * conv_state[S - (W-1) + k] + w[W-1] * x)
    conv_state <- [conv_state[1:], x]                         (shift left by one, x at the end)

One program owns `BLOCK_D` channels of one sequence: it reads the state row (and its copy shifted by one, from the cache)
and writes it back once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._triton_utils import empty

__all__ = ["causal_conv1d_update"]


@triton.jit
def _conv_step_rows(
    x_ptr,
    state_ptr,
    w_ptr,
    bias_ptr,
    pid_b,
    offs_d,
    mask_d,
    state_len,
    stride_x_b,
    stride_state_b,
    stride_state_d,
    stride_w_d,
    WIDTH: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """One step for the channels `offs_d` `[BLOCK_D]` of sequence `pid_b` (int64): shifts their conv state rows in
    place and returns act(conv) `[BLOCK_D]` in fp32. Shared with the fused mixer step (`kernels/mixer_step`)."""
    offs_s = tl.arange(0, BLOCK_S)  # [BLOCK_S]
    offs_d64 = offs_d.to(tl.int64)
    rows = state_ptr + pid_b * stride_state_b + offs_d64[:, None] * stride_state_d  # [BLOCK_D, 1]

    x = tl.load(x_ptr + pid_b * stride_x_b + offs_d, mask=mask_d, other=0.0)  # [BLOCK_D]
    # new[s] = old[s + 1] for s < S - 1, x at s = S - 1.
    shifted = tl.load(rows + offs_s[None, :] + 1, mask=mask_d[:, None] & (offs_s + 1 < state_len)[None, :], other=0.0)
    new = tl.where((offs_s == state_len - 1)[None, :], x[:, None].to(shifted.dtype), shifted)  # [BLOCK_D, BLOCK_S]

    # The window is the last WIDTH - 1 columns of the old state (taps 0..WIDTH-2) and x (tap WIDTH-1), which is
    # also what the last WIDTH columns of the new state hold when state_len >= WIDTH.
    old = tl.load(rows + offs_s[None, :], mask=mask_d[:, None] & (offs_s < state_len)[None, :], other=0.0)
    k = offs_s - (state_len - (WIDTH - 1))  # [BLOCK_S], tap index of each old column (negative: outside)
    in_window = (k >= 0) & (offs_s < state_len)
    w = tl.load(
        w_ptr + offs_d64[:, None] * stride_w_d + k[None, :], mask=mask_d[:, None] & in_window[None, :], other=0.0
    )
    w_last = tl.load(w_ptr + offs_d64 * stride_w_d + (WIDTH - 1), mask=mask_d, other=0.0).to(tl.float32)
    y = tl.sum(old.to(tl.float32) * w.to(tl.float32), axis=1) + w_last * x.to(tl.float32)  # [BLOCK_D]
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if SILU:
        y = y * tl.sigmoid(y)
    tl.debug_barrier()  # every read of the row happens before it is overwritten
    tl.store(rows + offs_s[None, :], new, mask=mask_d[:, None] & (offs_s < state_len)[None, :])
    return y


@triton.jit
def _causal_conv1d_update_kernel(
    x_ptr,
    state_ptr,
    w_ptr,
    bias_ptr,
    out_ptr,
    dim,
    state_len,
    stride_x_b,
    stride_state_b,
    stride_state_d,
    stride_w_d,
    WIDTH: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    mask_d = offs_d < dim
    y = _conv_step_rows(
        x_ptr, state_ptr, w_ptr, bias_ptr, pid_b, offs_d, mask_d, state_len,
        stride_x_b, stride_state_b, stride_state_d, stride_w_d, WIDTH, HAS_BIAS, SILU, BLOCK_S,
    )  # fmt: skip
    tl.store(out_ptr + pid_b * dim + offs_d, y.to(out_ptr.dtype.element_ty), mask=mask_d)


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str | None = None,
) -> torch.Tensor:
    """One step; same contract as the reference. Updates `conv_state` `(batch, dim, state_len >= width - 1)` in place.

    x: `(batch, dim)`; weight `(dim, width)`; bias `(dim,)`. Returns out `(batch, dim)` in x's dtype.
    """
    batch, dim = x.shape
    state_len = conv_state.shape[2]
    width = weight.shape[1]
    if conv_state.stride(-1) != 1:
        raise ValueError("conv_state must have last-dim stride 1 (it is updated in place)")
    x = x if x.stride(-1) == 1 else x.contiguous()
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    block_s = triton.next_power_of_2(state_len)
    block_d = max(1, min(64, 2048 // block_s))
    out = empty(batch, dim, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(dim, block_d), batch)
    _causal_conv1d_update_kernel[grid](
        x,
        conv_state,
        weight,
        bias,
        out,
        dim,
        state_len,
        x.stride(0),
        conv_state.stride(0),
        conv_state.stride(1),
        weight.stride(0),
        WIDTH=width,
        HAS_BIAS=bias is not None,
        SILU=activation in ("silu", "swish"),
        BLOCK_D=block_d,
        BLOCK_S=block_s,
        num_warps=4,
    )
    return out
