"""Next-token cross-entropy straight from hidden states, without keeping the logits.

With a 50k vocabulary the logits of a batch of 8 x 2048 tokens are `[16384, 50280]`: 1.6 GiB in bf16 plus 3.1 GiB in
fp32 for the softmax that `F.cross_entropy` keeps for its backward, the largest activation of a 130M model. Here the
LM head's matmul and the cross-entropy run together over chunks of rows: each chunk's logits exist only while that
chunk is scored, and since the loss is a scalar, its gradients with respect to the hidden states and the head's
weight are formed in the same pass (`softmax - onehot`, two matmuls) and kept instead (the size of the hidden states
and of the weight). The backward then only scales them by the incoming gradient.

The FLOPs are those of the unfused head (one matmul forward, two backward), done in the forward. The softmax and its
gradient are one kernel per chunk (`kernels.cross_entropy_grad_`: two reads and one write of the logits in their own
dtype, in place).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import kernels
from backbone.projections import add_matmul_, compute_dtype

__all__ = ["linear_token_nll"]

# [4096, 50280] bf16 logits: 0.4 GB at a time. Fewer chunks mean fewer read-modify-writes of the fp32 dW; at
# 16384 x 768 (H100, CUDA-graph timing of forward + backward): 1024 rows 10.2 ms, 2048 9.0 ms, 4096 8.4 ms (peak
# 1.38 GiB), 8192 8.2 ms (2.18 GiB).
DEFAULT_CHUNK_ROWS = 4096


def _chunk_nats(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Summed NLL of a chunk without its gradient (evaluation), in fp32."""
    return F.cross_entropy(logits.float(), targets, ignore_index=ignore_index, reduction="sum")


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index: int, chunk_rows: int):
        dtype = compute_dtype(hidden)
        h, w = hidden.to(dtype), weight.to(dtype)  # [N, D], [V, D]
        want_dh, want_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        nats = torch.zeros((), device=hidden.device, dtype=torch.float32)
        dh = torch.empty_like(h) if want_dh else None
        dw = torch.zeros(w.shape, device=w.device, dtype=torch.float32) if want_dw else None
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, h.shape[0], chunk_rows):
                rows = slice(start, start + chunk_rows)
                logits = h[rows] @ w.t()  # [c, V] in the compute dtype
                if not (want_dh or want_dw):
                    nats += _chunk_nats(logits, targets[rows], ignore_index)
                    continue
                # Row losses, and the logits overwritten with d nats / d logits = softmax - onehot (kernels/).
                nats += kernels.cross_entropy_grad_(logits, targets[rows], ignore_index=ignore_index).sum()
                if want_dh:
                    torch.mm(logits, w, out=dh[rows])
                if want_dw:
                    add_matmul_(dw, logits.t(), h[rows])  # fp32 accumulation inside the GEMM
        ctx.save_for_backward(dh, dw)
        return nats

    @staticmethod
    def backward(ctx, grad_nats):
        dh, dw = ctx.saved_tensors
        return (
            None if dh is None else dh * grad_nats.to(dh.dtype),
            None if dw is None else dw * grad_nats,
            None,
            None,
            None,
        )


def linear_token_nll(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL of `hidden @ weight^T` and the number of scored targets, without storing the logits.

    Equals `F.cross_entropy(F.linear(hidden, weight).flatten(0, -2).float(), targets.flatten(), reduction="sum",
    ignore_index=ignore_index)` (the matmul in the autocast dtype when autocast is on, the softmax in fp32).

    Args:
        hidden: `[..., D]` final hidden states.
        weight: `[V, D]` LM head (e.g. the tied embedding).
        targets: `[...]` int64 token ids, `ignore_index` where nothing is scored.
        chunk_rows: rows scored at a time; peak extra memory is about `chunk_rows * V` logits (fp32 when evaluating).

    Returns:
        `(nats, count)`: 0-dim fp32 sum over scored targets (differentiable), 0-dim int64 count.
    """
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} disagree on [..., L]")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be [V, D={hidden.shape[-1]}], got {tuple(weight.shape)}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    flat_targets = targets.reshape(-1)
    rows = hidden.reshape(-1, hidden.shape[-1])
    nats = _LinearCrossEntropy.apply(rows, weight, flat_targets, ignore_index, chunk_rows)
    return nats, (flat_targets != ignore_index).sum()
