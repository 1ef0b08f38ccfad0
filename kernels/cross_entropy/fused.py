"""Softmax cross-entropy and its gradient in Triton: one program per row, two passes over it.

Pass 1 reads the row once and keeps a running max and sum of exponentials (the online softmax), giving
`lse = logsumexp(row)` and `nats = lse - row[target]`; pass 2 reads the row again and overwrites it with
`exp(row - lse) - onehot(target)` (zeros for an ignored row). That is two reads and one write of the logits in their
own dtype, where `F.cross_entropy` on `logits.float()` makes an fp32 copy, keeps fp32 softmax values for its backward
and reads them back. Math and the PyTorch spec: `kernels/cross_entropy/ref.py`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._triton_utils import empty

__all__ = ["cross_entropy_grad_"]

BLOCK_V = 4096  # columns per iteration: 8 KB of bf16 per load over 8 warps
NUM_WARPS = 8


@triton.jit
def _cross_entropy_grad_kernel(
    logits_ptr,
    targets_ptr,
    nats_ptr,
    n_cols,
    stride_row,
    ignore_index,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    offs = tl.arange(0, BLOCK_V)
    target = tl.load(targets_ptr + row)
    scored = target != ignore_index
    target = tl.where(scored, target, 0)

    # Pass 1: online logsumexp. The first block always holds a real column, so the running max is finite after it
    # and exp(m_old - m_new) never sees -inf - -inf.
    m = float("-inf")
    s = 0.0
    for start in range(0, n_cols, BLOCK_V):
        cols = start + offs
        x = tl.load(row_ptr + cols, mask=cols < n_cols, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    target_logit = tl.load(row_ptr + target).to(tl.float32)
    tl.store(nats_ptr + row, tl.where(scored, lse - target_logit, 0.0))

    # Pass 2: the gradient, in place.
    for start in range(0, n_cols, BLOCK_V):
        cols = start + offs
        mask = cols < n_cols
        x = tl.load(row_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        grad = tl.exp(x - lse) - tl.where(cols == target, 1.0, 0.0)
        grad = tl.where(scored, grad, 0.0)
        tl.store(row_ptr + cols, grad.to(logits_ptr.dtype.element_ty), mask=mask)


def cross_entropy_grad_(logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int = -100) -> torch.Tensor:
    """`logits` `[N, V]` (unit column stride; overwritten with the gradient), `targets` `[N]` int -> `nats` `[N]` fp32."""
    n_rows, n_cols = logits.shape
    nats = empty(n_rows, device=logits.device, dtype=torch.float32)
    if n_rows:
        _cross_entropy_grad_kernel[(n_rows,)](
            logits, targets, nats, n_cols, logits.stride(0), ignore_index, BLOCK_V=BLOCK_V, num_warps=NUM_WARPS
        )
    return nats
