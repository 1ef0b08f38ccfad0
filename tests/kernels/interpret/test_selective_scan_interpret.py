"""Triton selective scan (forward, backward, decode step) against the reference, under TRITON_INTERPRET=1 on CPU.

Run through `tests/kernels/test_interpreter_suite.py`, or directly:
`TRITON_INTERPRET=1 MAMBALAB_KERNELS=triton python -m pytest tests/kernels/interpret -q`.
"""

from __future__ import annotations

import os

import pytest
import torch
from kernel_tolerance import assert_close

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="Triton interpreter tests: run with TRITON_INTERPRET=1"
)

import kernels  # noqa: E402
from kernels.selective_scan import ref  # noqa: E402

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def make_inputs(
    batch, dim, seqlen, dstate, dtype, *, groups=None, has_D=True, has_z=True, has_bias=True, has_init=True
):
    bc_shape = (batch, dstate, seqlen) if groups is None else (batch, groups, dstate, seqlen)
    return dict(
        u=torch.randn(batch, dim, seqlen).to(dtype),
        delta=(0.5 * torch.randn(batch, dim, seqlen) - 1.0).to(dtype),
        A=-(0.5 + torch.rand(dim, dstate)),
        B=torch.randn(bc_shape).to(dtype),
        C=torch.randn(bc_shape).to(dtype),
        D=torch.randn(dim) if has_D else None,
        z=torch.randn(batch, dim, seqlen).to(dtype) if has_z else None,
        delta_bias=0.5 * torch.randn(dim) if has_bias else None,
        initial_state=torch.randn(batch, dim, dstate) if has_init else None,
    )


def run(fn, inputs, dout, dlast, *, upcast, delta_softplus):
    """Outputs and all input gradients of `fn`, inputs upcast to fp32 when `upcast`."""
    leaves = {
        k: (None if v is None else (v.float() if upcast else v).clone().requires_grad_()) for k, v in inputs.items()
    }
    out, last = fn(**leaves, delta_softplus=delta_softplus, return_last_state=True)
    loss = (out.float() * dout.float()).sum() + (last * dlast).sum()
    present = [k for k in NAMES if leaves[k] is not None]
    grads = dict(zip(present, torch.autograd.grad(loss, [leaves[k] for k in present])))
    return out, last, grads


def check(inputs, *, delta_softplus=True):
    u = inputs["u"]
    dout = torch.randn(u.shape).to(u.dtype)
    dlast = torch.randn(u.shape[0], u.shape[1], inputs["A"].shape[1])
    with kernels.use_triton():
        fast = run(kernels.selective_scan, inputs, dout, dlast, upcast=False, delta_softplus=delta_softplus)
    lowp = run(ref.selective_scan, inputs, dout, dlast, upcast=False, delta_softplus=delta_softplus)
    hi = run(ref.selective_scan, inputs, dout, dlast, upcast=True, delta_softplus=delta_softplus)
    assert_close("out", fast[0], lowp[0], hi[0])
    assert_close("last_state", fast[1], lowp[1], hi[1])
    for name in fast[2]:
        assert_close(f"d{name}", fast[2][name], lowp[2][name], hi[2][name])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("seqlen", [1, 7, 65, 200])
def test_scan_all_options(seqlen, dtype):
    check(make_inputs(2, 5, seqlen, 16 if seqlen == 200 else 4, dtype))


@pytest.mark.parametrize(
    "options",
    [
        dict(has_D=False, has_z=False, has_bias=False, has_init=False),
        dict(has_D=True, has_z=False, has_bias=False, has_init=True),
        dict(has_D=False, has_z=True, has_bias=True, has_init=False),
    ],
    ids=["bare", "D+init", "z+bias"],
)
@pytest.mark.parametrize("softplus", [True, False])
def test_scan_optional_inputs(options, softplus):
    inputs = make_inputs(2, 3, 65, 4, torch.float32, **options)
    if not softplus:  # keep dt > 0 so the system stays stable
        inputs["delta"] = 0.1 + 0.5 * torch.rand(inputs["delta"].shape)
        if inputs["delta_bias"] is not None:
            inputs["delta_bias"] = inputs["delta_bias"].abs()
    check(inputs, delta_softplus=softplus)


@pytest.mark.parametrize("groups,dim", [(2, 4), (3, 6), (2, 6)])
def test_scan_grouped(groups, dim):
    check(make_inputs(2, dim, 40, 8, torch.float32, groups=groups))


@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("reduction", ["atomics", "partials"])
def test_scan_dB_dC_reductions(monkeypatch, reduction, groups):
    from kernels.selective_scan import scan

    monkeypatch.setattr(scan, "DBC_REDUCTION", reduction)
    check(make_inputs(2, 4, 30, 4, torch.float32, groups=groups))


def test_scan_grouped_bf16_dstate_not_power_of_two():
    check(make_inputs(1, 4, 33, 6, torch.bfloat16, groups=2))


def test_scan_no_grad_matches_and_returns_contract():
    inputs = make_inputs(2, 3, 20, 4, torch.bfloat16)
    with torch.no_grad(), kernels.use_triton():
        out = kernels.selective_scan(**inputs, delta_softplus=True)
        out2, last = kernels.selective_scan(**inputs, delta_softplus=True, return_last_state=True)
    expected, expected_last = ref.selective_scan(**inputs, delta_softplus=True, return_last_state=True)
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32
    torch.testing.assert_close(out, out2)
    torch.testing.assert_close(out.float(), expected.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(last, expected_last, atol=1e-4, rtol=1e-4)


def test_scan_non_contiguous_views():
    # u and z as halves of one projection (stride over channels != seqlen), as the mixer produces them.
    batch, dim, seqlen, dstate = 2, 4, 30, 4
    xz = torch.randn(batch, 2 * dim, seqlen)
    u, z = xz[:, :dim], xz[:, dim:]
    inputs = make_inputs(batch, dim, seqlen, dstate, torch.float32)
    inputs.update(u=u, z=z)
    check(inputs)


@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_state_update_matches_reference(groups, dtype):
    batch, dim, dstate = 2, 6, 16
    state = torch.randn(batch, dim, dstate)
    bc = (batch, dstate) if groups is None else (batch, groups, dstate)
    args = dict(
        x=torch.randn(batch, dim).to(dtype),
        dt=torch.randn(batch, dim).to(dtype),
        A=-torch.rand(dim, dstate),
        B=torch.randn(bc).to(dtype),
        C=torch.randn(bc).to(dtype),
        D=torch.randn(dim),
        z=torch.randn(batch, dim).to(dtype),
        dt_bias=torch.randn(dim),
    )
    fast_state, lowp_state, hi_state = state.clone(), state.clone(), state.clone()
    with kernels.use_triton():
        fast = kernels.selective_state_update(fast_state, **args, dt_softplus=True)
    lowp = ref.selective_state_update(lowp_state, **args, dt_softplus=True)
    hi = ref.selective_state_update(hi_state, **{k: v.float() for k, v in args.items()}, dt_softplus=True)
    assert_close("out", fast, lowp, hi)
    assert_close("state", fast_state, lowp_state, hi_state)


def test_state_update_steps_equal_full_scan():
    batch, dim, seqlen, dstate = 2, 4, 9, 8
    inputs = make_inputs(batch, dim, seqlen, dstate, torch.float32)
    expected, expected_last = ref.selective_scan(**inputs, delta_softplus=True, return_last_state=True)
    state = inputs["initial_state"].clone()
    outs = []
    with kernels.use_triton():
        for t in range(seqlen):
            outs.append(
                kernels.selective_state_update(
                    state,
                    inputs["u"][..., t],
                    inputs["delta"][..., t],
                    inputs["A"],
                    inputs["B"][..., t],
                    inputs["C"][..., t],
                    inputs["D"],
                    inputs["z"][..., t],
                    inputs["delta_bias"],
                    dt_softplus=True,
                )
            )
    torch.testing.assert_close(torch.stack(outs, -1), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, expected_last, atol=1e-5, rtol=1e-5)
