"""Depthwise causal 1-D convolution (+ optional SiLU) in pure PyTorch: the spec, the test oracle and the CPU path.

Per channel d and step t, with width W and the `W - 1` inputs before the sequence taken from `initial_state`
(zeros by default)::

    out[d, t] = act(bias[d] + sum_{k=0}^{W-1} weight[d, k] * x[d, t - (W - 1) + k])

The final state is the last `W - 1` inputs (initial state included when the sequence is shorter), which is what
decoding needs to continue the sequence one step at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["causal_conv1d", "causal_conv1d_update"]


def _activate(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    return F.silu(y) if activation == "silu" else y


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
):
    """Causal depthwise conv over `(batch, dim, seqlen)`; see the module docstring.

    Args:
        x: `(batch, dim, seqlen)`.  weight: `(dim, width)`.  bias: `(dim,)` or None.
        activation: None or "silu".
        initial_state: `(batch, dim, width - 1)`: the inputs just before `x`, or None for zeros.

    Returns:
        out `(batch, dim, seqlen)` in x's dtype (computed in fp32), and the final state
        `(batch, dim, width - 1)` in x's dtype when `return_final_state`.
    """
    batch, dim, _ = x.shape
    width = weight.shape[1]
    if initial_state is None:
        history = x.new_zeros(batch, dim, width - 1)
    else:
        history = initial_state.to(x.dtype)
    padded = torch.cat([history, x], dim=-1)
    y = F.conv1d(padded.float(), weight.float()[:, None, :], None if bias is None else bias.float(), groups=dim)
    out = _activate(y, activation).to(x.dtype)
    if not return_final_state:
        return out
    return out, padded[:, :, padded.shape[-1] - (width - 1) :].contiguous()


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str | None = None,
) -> torch.Tensor:
    """One decoding step; shifts `conv_state` left by one and writes `x` at its end, in place.

    Args:
        x: `(batch, dim)`.  conv_state: `(batch, dim, state_len)` with `state_len >= width - 1`; its last
            `width - 1` columns are the previous inputs.  weight: `(dim, width)`.  bias: `(dim,)` or None.

    Returns:
        out `(batch, dim)` in x's dtype.
    """
    width = weight.shape[1]
    window = torch.cat([conv_state[:, :, conv_state.shape[-1] - (width - 1) :].float(), x.float()[..., None]], -1)
    y = (window * weight.float()).sum(-1)  # the last width-1 previous inputs and x
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x.to(conv_state.dtype)
    if bias is not None:
        y = y + bias.float()
    return _activate(y, activation).to(x.dtype)
