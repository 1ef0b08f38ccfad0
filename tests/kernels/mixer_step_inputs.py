"""Inputs for the fused mixer decode step's tests (interpreter and GPU)."""

from __future__ import annotations

import torch


def make_step_inputs(batch, dim, dstate, dt_rank, width, state_len, dtype, *, optional=True, seed=0, device="cpu"):
    """Arguments of `kernels.mixer_step` (x and z as the strided halves of one in_proj output), seeded."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    xz = randn(batch, 2 * dim).to(dtype)  # the mixer hands over the two halves of in_proj's output (strided views)
    return dict(
        x=xz[:, :dim],
        z=xz[:, dim:] if optional else None,
        conv_state=randn(batch, dim, state_len).to(dtype),
        ssm_state=randn(batch, dim, dstate),
        conv_weight=randn(dim, width, scale=width**-0.5),
        conv_bias=randn(dim) if optional else None,
        x_proj_weight=randn(dt_rank + 2 * dstate, dim, scale=dim**-0.5).to(dtype),
        dt_proj_weight=randn(dim, dt_rank, scale=dt_rank**-0.5).to(dtype),
        A=(-torch.rand(dim, dstate, generator=g) - 0.1).to(device),
        D=randn(dim) if optional else None,
        dt_bias=randn(dim, scale=0.5) - 2.0 if optional else None,
    )


def run_step(fn, inputs, *, upcast=False):
    """fn on the inputs with fresh copies of the states (updated in place); returns (out, conv_state, ssm_state).
    `upcast` runs it on the same values in fp32."""
    args = dict(inputs, conv_state=inputs["conv_state"].clone(), ssm_state=inputs["ssm_state"].clone())
    if upcast:
        args = {k: None if v is None else v.float() for k, v in args.items()}
    out = fn(**args)
    return out, args["conv_state"], args["ssm_state"]
