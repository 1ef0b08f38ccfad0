"""Reference (pure PyTorch) softmax cross-entropy that also turns the logits into their gradient, in place.

Per row r of `logits` `[N, V]` with target `t_r` (rows whose target is `ignore_index` score nothing)::

    nats[r]    = logsumexp(logits[r]) - logits[r, t_r]
    logits[r] <- softmax(logits[r]) - onehot(t_r)          (d nats[r] / d logits[r]; zeros for ignored rows)

The loss is computed in fp32 whatever the logits' dtype; the gradient is stored in the logits' dtype.
"""

from __future__ import annotations

import torch


def cross_entropy_grad_(logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int = -100) -> torch.Tensor:
    """`logits` `[N, V]` (overwritten with the gradient), `targets` `[N]` int -> `nats` `[N]` fp32."""
    x = logits.float()
    lse = torch.logsumexp(x, dim=-1)  # [N]
    scored = targets != ignore_index
    target = torch.where(scored, targets, 0)[:, None]  # [N, 1], any valid column where unscored
    nats = (lse - x.gather(1, target).squeeze(1)) * scored
    grad = (x - lse[:, None]).exp_()  # softmax
    grad.scatter_add_(1, target, -scored[:, None].to(grad.dtype))
    grad *= scored[:, None]
    logits.copy_(grad)
    return nats
