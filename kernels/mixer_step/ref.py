"""Reference for the fused mixer decode step: the unfused decode ops in the order the mixer calls them.

Per sequence b (Mamba-1 block, SiLU after the conv, softplus on the step size)::

    x            = silu(conv_step(x, conv_state))          conv_state shifted in place
    dt_in, B, C  = split(x_proj_weight @ x, [dt_rank, dstate, dstate])
    dt           = dt_proj_weight @ dt_in
    out          = selective_state_update(ssm_state, x, dt, A, B, C, D, z, dt_bias, dt_softplus=True)

Each intermediate is a tensor of x's dtype, as in the unfused step (so the fused kernels round to it at the same
places).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.causal_conv1d.ref import causal_conv1d_update
from kernels.selective_scan.ref import selective_state_update

__all__ = ["mixer_step"]


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
    """Shapes: x, z `(batch, dim)`; conv_state `(batch, dim, state_len)`; ssm_state `(batch, dim, dstate)` fp32;
    conv_weight `(dim, width)`; x_proj_weight `(dt_rank + 2 * dstate, dim)`; dt_proj_weight `(dim, dt_rank)`;
    A `(dim, dstate)`; D, dt_bias, conv_bias `(dim,)`. Returns out `(batch, dim)` in x's dtype; both states are
    updated in place."""
    dstate = ssm_state.shape[-1]
    dt_rank = dt_proj_weight.shape[1]
    x = causal_conv1d_update(x, conv_state, conv_weight, conv_bias, activation="silu")
    dt, B, C = torch.split(F.linear(x, x_proj_weight.to(x.dtype)), [dt_rank, dstate, dstate], dim=-1)
    dt = F.linear(dt, dt_proj_weight.to(x.dtype))
    return selective_state_update(ssm_state, x, dt, A, B, C, D, z, dt_bias, dt_softplus=True)
