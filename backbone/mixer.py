"""The Mamba mixer (selective SSM block), with the public checkpoints' exact parameter names and shapes.

    x, z   = in_proj(hidden).split(d_inner)                     [B, d_inner, L] each
    x      = silu(causal_conv1d(x))                             depthwise, width d_conv (then mixer_dropout)
    dt, B, C = x_proj(x).split(dt_rank, d_state, d_state)
    delta  = dt_proj.weight @ dt  (its bias is applied inside the scan, before the softplus)
    y      = selective_scan(x, delta, A = -exp(A_log), B, C, D, z, dt_proj.bias, softplus)
    out    = out_proj(y)

The math of every step lives in `kernels/`; this module only wires parameters and layouts. The sequences stay in
channel-major memory (`[channels, B L]` matrices, time contiguous) from in_proj to out_proj, so no activation is
ever transposed (`backbone/projections.py` says why).
"""

from __future__ import annotations

import torch
from torch import nn

import kernels
from backbone.cache import LayerCache
from backbone.config import MambaConfig
from backbone.init import NO_WEIGHT_DECAY, init_dt_proj_, s4d_real_A_log
from backbone.projections import from_channel_major, in_projection, out_projection, x_projection


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
        # Identity when unused, so inference and the public checkpoints pay nothing for it.
        self.mixer_dropout = nn.Dropout(config.mixer_dropout) if config.mixer_dropout > 0 else nn.Identity()

    @property
    def _conv_weight(self) -> torch.Tensor:
        return self.conv1d.weight[:, 0, :]  # [d_inner, d_conv]

    def _split_projection(self, x_dbl: torch.Tensor, dim: int = -1):
        c = self.config
        return torch.split(x_dbl, [c.dt_rank_value, c.d_state, c.d_state], dim=dim)

    def forward(self, hidden: torch.Tensor, cache: LayerCache | None = None, *, continuing: bool = False):
        """`hidden` `[B, L, D]` -> `[B, L, D]`.

        With a `cache`, the final conv and SSM states are written into it (prefill); with `continuing`, the
        sequence starts from the states already in the cache (chunked prefill).
        """
        batch = hidden.shape[0]
        # Channel-major sequences throughout: `(B, d_inner, L)` views of `[d_inner, B L]` matrices, time contiguous,
        # which the kernels read fastest and keep for their outputs and gradients (see backbone/projections.py).
        x, z = in_projection(hidden, self.in_proj.weight, self.in_proj.bias)  # [B, d_inner, L] each
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
        x = self.mixer_dropout(x)
        # x comes back from x_projection unchanged; the scan must take this x (see backbone/projections.py). The scan
        # is its only consumer and returns a new dx, so x_proj's backward may add its part into that dx in place.
        x, x_dbl = x_projection(x, self.x_proj.weight, sum_into_downstream_grad=True)  # x_dbl: [dt_rank + 2 N, B L]
        dt, B, C = self._split_projection(x_dbl, dim=0)
        delta = from_channel_major(self.dt_proj.weight @ dt, batch)  # [B, d_inner, L]
        scan = kernels.selective_scan(
            x,
            delta,
            -torch.exp(self.A_log.float()),
            from_channel_major(B, batch),  # [B, N, L]
            from_channel_major(C, batch),
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
        return out_projection(y, self.out_proj.weight, self.out_proj.bias)  # [B, L, D]

    @torch.no_grad()
    def _decode_constants(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`A = -exp(A_log)`, `D` and the step-size bias in fp32, as the state-update kernel takes them.

        Decoding needs them every token, and computing them is five small kernels per layer: about a quarter of a
        130M model's decode step at batch 1, where each kernel costs its ~2 us launch even inside a CUDA graph. So
        they are kept, and recomputed only when a parameter changes (an optimizer step or a load bumps the tensor's
        version; a `.to()` gives a new tensor)."""
        params = (self.A_log, self.D, self.dt_proj.bias)

        def compute():
            return -torch.exp(self.A_log.float()), self.D.float(), self.dt_proj.bias.float()

        if any(p.is_inference() for p in params):  # made under torch.inference_mode: no version counter to watch
            return compute()
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        if getattr(self, "_decode_key", None) != key:
            self._decode_cache, self._decode_key = compute(), key
        return self._decode_cache

    @torch.no_grad()
    def step(self, hidden: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """One decoding step: `hidden` `[B, D]` -> `[B, D]`; updates `cache` in place."""
        return self.step_projected(self.in_proj(hidden), cache)

    @torch.no_grad()
    def step_projected(self, xz: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """`step` after in_proj: `xz` `[B, 2 * d_inner]` -> `[B, D]`; updates `cache` in place."""
        x, z = xz.chunk(2, dim=-1)  # [B, d_inner] each
        A, D, dt_bias = self._decode_constants()
        # Conv step, x_proj, dt_proj and SSM step in one op: two kernels on the Triton path (launch-bound at batch 1).
        y = kernels.mixer_step(
            x, z, cache.conv_state, cache.ssm_state, self._conv_weight, self.conv1d.bias,
            self.x_proj.weight, self.dt_proj.weight, A, D, dt_bias,
        )  # fmt: skip
        return kernels.decode_linear(y, self.out_proj.weight, self.out_proj.bias)
