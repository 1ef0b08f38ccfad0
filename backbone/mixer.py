"""The Mamba mixer (selective SSM block), with the public checkpoints' exact parameter names and shapes.

    x, z   = in_proj(hidden).split(d_inner)                     [B, L, 2 * d_inner]
    x      = silu(causal_conv1d(x))                             depthwise, width d_conv
    dt, B, C = x_proj(x).split(dt_rank, d_state, d_state)
    delta  = dt_proj.weight @ dt  (its bias is applied inside the scan, before the softplus)
    y      = selective_scan(x, delta, A = -exp(A_log), B, C, D, z, dt_proj.bias, softplus)
    out    = out_proj(y)

The math of every step lives in `kernels/`; this module only wires parameters and layouts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from backbone.cache import LayerCache
from backbone.config import MambaConfig
from backbone.init import NO_WEIGHT_DECAY, init_dt_proj_, s4d_real_A_log


class MambaMixer(nn.Module):
    def __init__(self, config: MambaConfig) -> None:
        super().__init__()
        self.config = config
        d_inner, dt_rank, d_state = config.d_inner, config.dt_rank_value, config.d_state
        self.in_proj = nn.Linear(config.d_model, 2 * d_inner, bias=config.bias)
        self.conv1d = nn.Conv1d(
            d_inner, d_inner, kernel_size=config.d_conv, groups=d_inner, padding=config.d_conv - 1,
            bias=config.conv_bias,
        )  # fmt: skip
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        init_dt_proj_(self.dt_proj, config)
        self.A_log = nn.Parameter(s4d_real_A_log(d_inner, d_state))
        self.D = nn.Parameter(torch.ones(d_inner))
        for param in (self.A_log, self.D):
            setattr(param, NO_WEIGHT_DECAY, True)
        self.out_proj = nn.Linear(d_inner, config.d_model, bias=config.bias)

    @property
    def _conv_weight(self) -> torch.Tensor:
        return self.conv1d.weight[:, 0, :]  # [d_inner, d_conv]

    def _split_projection(self, x_dbl: torch.Tensor):
        c = self.config
        return torch.split(x_dbl, [c.dt_rank_value, c.d_state, c.d_state], dim=-1)

    def forward(self, hidden: torch.Tensor, cache: LayerCache | None = None, *, continuing: bool = False):
        """`hidden` `[B, L, D]` -> `[B, L, D]`.

        With a `cache`, the final conv and SSM states are written into it (prefill); with `continuing`, the
        sequence starts from the states already in the cache (chunked prefill).
        """
        xz = self.in_proj(hidden).transpose(1, 2)  # [B, 2 * d_inner, L]
        x, z = xz.chunk(2, dim=1)
        width = self.config.d_conv
        conv_initial = cache.conv_state[:, :, -(width - 1) :].to(x.dtype) if cache is not None and continuing else None
        conv = kernels.causal_conv1d(
            x, self._conv_weight, self.conv1d.bias, activation="silu", initial_state=conv_initial,
            return_final_state=cache is not None,
        )  # fmt: skip
        if cache is not None:
            x, conv_final = conv
            cache.conv_state[:, :, -(width - 1) :].copy_(conv_final)
        else:
            x = conv
        dt, B, C = self._split_projection(self.x_proj(x.transpose(1, 2)))  # [B, L, r], [B, L, N], [B, L, N]
        delta = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # [B, d_inner, L]
        scan = kernels.selective_scan(
            x,
            delta,
            -torch.exp(self.A_log.float()),
            B.transpose(1, 2),
            C.transpose(1, 2),
            self.D.float(),
            z,
            self.dt_proj.bias.float(),
            delta_softplus=True,
            return_last_state=cache is not None,
            initial_state=cache.ssm_state if cache is not None and continuing else None,
        )
        if cache is not None:
            y, last_state = scan
            cache.ssm_state.copy_(last_state)
        else:
            y = scan
        return self.out_proj(y.transpose(1, 2))

    @torch.no_grad()
    def step(self, hidden: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """One decoding step: `hidden` `[B, D]` -> `[B, D]`; updates `cache` in place."""
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # [B, d_inner] each
        x = kernels.causal_conv1d_update(x, cache.conv_state, self._conv_weight, self.conv1d.bias, activation="silu")
        dt, B, C = self._split_projection(self.x_proj(x))
        dt = F.linear(dt, self.dt_proj.weight)
        y = kernels.selective_state_update(
            cache.ssm_state, x, dt, -torch.exp(self.A_log.float()), B, C, self.D.float(), z,
            self.dt_proj.bias.float(), dt_softplus=True,
        )  # fmt: skip
        return self.out_proj(y)
