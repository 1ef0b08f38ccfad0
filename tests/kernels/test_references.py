"""The pure-PyTorch references (the spec): chunked scan vs the sequential oracle, conv vs a direct loop, decode steps
vs full passes, and argument validation of the public ops (on the 'meta' device, so nothing runs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels.causal_conv1d import ref as conv_ref
from kernels.rms_norm import ref as norm_ref
from kernels.selective_scan import ref as scan_ref

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def scan_inputs(batch, dim, seqlen, dstate, dtype=torch.float32, groups=None):
    bc = (batch, dstate, seqlen) if groups is None else (batch, groups, dstate, seqlen)
    return dict(
        u=torch.randn(batch, dim, seqlen).to(dtype),
        delta=(0.5 * torch.randn(batch, dim, seqlen) - 1).to(dtype),
        A=-(0.5 + torch.rand(dim, dstate)),
        B=torch.randn(bc).to(dtype),
        C=torch.randn(bc).to(dtype),
        D=torch.randn(dim),
        z=torch.randn(batch, dim, seqlen).to(dtype),
        delta_bias=0.5 * torch.randn(dim),
        initial_state=torch.randn(batch, dim, dstate),
    )


@pytest.mark.parametrize("seqlen,chunk_size", [(1, None), (7, None), (65, None), (65, 8), (100, 1), (37, 64)])
@pytest.mark.parametrize("groups", [None, 2])
def test_chunked_scan_matches_sequential_with_grads(seqlen, chunk_size, groups):
    inputs = scan_inputs(2, 4, seqlen, 5, groups=groups)
    results = []
    for fn, extra in ((scan_ref.selective_scan_sequential, {}), (scan_ref.selective_scan, {"chunk_size": chunk_size})):
        leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        out, last = fn(**leaves, delta_softplus=True, return_last_state=True, **extra)
        torch.manual_seed(1)
        loss = (out * torch.randn_like(out)).sum() + (last * torch.randn_like(last)).sum()
        results.append([out, last, *torch.autograd.grad(loss, [leaves[k] for k in NAMES])])
    for name, a, b in zip(("out", "last", *NAMES), *results):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scan_dtypes_and_zero_length(dtype):
    inputs = scan_inputs(1, 3, 20, 4, dtype)
    out, last = scan_ref.selective_scan(**inputs, delta_softplus=True, return_last_state=True)
    expected = scan_ref.selective_scan_sequential(**inputs, delta_softplus=True)
    assert out.dtype == dtype and last.dtype == torch.float32
    torch.testing.assert_close(out, expected, atol=2e-2 if dtype == torch.bfloat16 else 1e-5, rtol=1e-2)
    empty = scan_inputs(1, 3, 0, 4)
    out0, last0 = scan_ref.selective_scan(**empty, return_last_state=True)
    assert out0.shape == (1, 3, 0)
    torch.testing.assert_close(last0, empty["initial_state"])


@pytest.mark.parametrize("groups", [None, 3])
def test_state_update_steps_equal_full_scan(groups):
    batch, dim, seqlen, dstate = 2, 6, 12, 4
    inputs = scan_inputs(batch, dim, seqlen, dstate, groups=groups)
    expected, expected_last = scan_ref.selective_scan(**inputs, delta_softplus=True, return_last_state=True)
    state = inputs["initial_state"].clone()
    outs = [
        scan_ref.selective_state_update(
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
        for t in range(seqlen)
    ]
    torch.testing.assert_close(torch.stack(outs, -1), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, expected_last, atol=1e-5, rtol=1e-5)


def conv_direct(x, weight, bias, initial_state, activation):
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    hist = torch.zeros(batch, dim, width - 1) if initial_state is None else initial_state.float()
    xp = torch.cat([hist, x.float()], -1)
    out = torch.stack(
        [(xp[:, :, t : t + width] * weight).sum(-1) + (0 if bias is None else bias) for t in range(seqlen)], -1
    )
    return F.silu(out) if activation == "silu" else out


@pytest.mark.parametrize("width", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("seqlen", [1, 3, 17])
def test_conv_matches_direct_loop(width, seqlen):
    x, weight, bias = torch.randn(2, 3, seqlen), torch.randn(3, width), torch.randn(3)
    init = torch.randn(2, 3, width - 1)
    out, final = conv_ref.causal_conv1d(x, weight, bias, activation="silu", initial_state=init, return_final_state=True)
    torch.testing.assert_close(out, conv_direct(x, weight, bias, init, "silu"), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final, torch.cat([init, x], -1)[:, :, -(width - 1) :])
    torch.testing.assert_close(
        conv_ref.causal_conv1d(x, weight), conv_direct(x, weight, None, None, None), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("width", [2, 4, 6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("extra_columns", [0, 1, 3])
def test_conv_update_steps_equal_full_conv(width, dtype, extra_columns):
    batch, dim, seqlen = 2, 3, 9
    x, weight, bias = torch.randn(batch, dim, seqlen).to(dtype), torch.randn(dim, width), torch.randn(dim)
    expected = conv_ref.causal_conv1d(x, weight, bias, activation="silu")
    # Any state length >= width - 1 is allowed; only the last width - 1 columns are read.
    state = torch.zeros(batch, dim, width - 1 + extra_columns, dtype=dtype)
    outs = [conv_ref.causal_conv1d_update(x[..., t], state, weight, bias, activation="silu") for t in range(seqlen)]
    torch.testing.assert_close(torch.stack(outs, -1), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norms_match_torch(dtype):
    x, res, w, b = (torch.randn(2, 5, 16).to(dtype), torch.randn(2, 5, 16).to(dtype), torch.randn(16), torch.randn(16))
    out, new_res = norm_ref.rms_norm(x, w, None, res, eps=1e-5, prenorm=True, residual_in_fp32=True)
    rows = x.float() + res.float()
    assert new_res.dtype == torch.float32 and out.dtype == dtype
    torch.testing.assert_close(out.float(), F.rms_norm(rows, (16,), w, eps=1e-5), atol=2e-2, rtol=1e-2)
    ln = norm_ref.layer_norm(x, w, b, res, eps=1e-5)
    torch.testing.assert_close(ln.float(), F.layer_norm(rows, (16,), w, b, eps=1e-5), atol=2e-2, rtol=1e-2)


def meta(*shape):
    return torch.empty(*shape, device="meta")


def scan_meta_args(**overrides):
    args = dict(u=meta(2, 8, 16), delta=meta(2, 8, 16), A=meta(8, 4), B=meta(2, 4, 16), C=meta(2, 4, 16))
    args.update(overrides)
    return args


@pytest.mark.parametrize(
    "overrides,name",
    [
        (dict(u=meta(8, 16)), "u"),
        (dict(delta=meta(2, 8, 15)), "delta"),
        (dict(A=meta(7, 4)), "A"),
        (dict(B=meta(2, 5, 16)), "B"),
        (dict(C=meta(2, 3, 4, 16)), "C"),
        (dict(D=meta(7)), "D"),
        (dict(z=meta(2, 8)), "z"),
        (dict(initial_state=meta(2, 8, 5)), "initial_state"),
        (dict(delta=torch.empty(2, 8, 16)), "delta"),
        (dict(u=torch.empty(2, 8, 16, dtype=torch.int64, device="meta")), "u"),
    ],
)
def test_selective_scan_bad_arguments_name_the_argument(overrides, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        kernels.selective_scan(**scan_meta_args(**overrides))


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda: kernels.causal_conv1d(meta(2, 8, 16), meta(7, 4)), "weight"),
        (lambda: kernels.causal_conv1d(meta(2, 8, 16), meta(8, 4), meta(7)), "bias"),
        (lambda: kernels.causal_conv1d(meta(2, 8, 16), meta(8, 4), initial_state=meta(2, 8, 4)), "initial_state"),
        (lambda: kernels.causal_conv1d(meta(2, 8, 16), meta(8, 4), activation="relu"), "activation"),
        (lambda: kernels.causal_conv1d(meta(2, 8, 16), torch.empty(8, 4)), "weight"),
        (lambda: kernels.causal_conv1d_update(meta(2, 8), meta(2, 8, 2), meta(8, 4)), "conv_state"),
        (
            lambda: kernels.selective_state_update(
                meta(2, 8, 4), meta(2, 8), meta(2, 8), meta(8, 4), meta(2, 4), meta(2, 5)
            ),
            "C",
        ),
        (
            lambda: kernels.selective_state_update(
                torch.empty(2, 8, 4, dtype=torch.bfloat16, device="meta"),
                meta(2, 8),
                meta(2, 8),
                meta(8, 4),
                meta(2, 4),
                meta(2, 4),
            ),
            "state",
        ),
        (lambda: kernels.rms_norm(meta(2, 16), meta(15)), "weight"),
        (lambda: kernels.layer_norm(meta(2, 16), meta(16), residual=meta(2, 15)), "residual"),
    ],
)
def test_other_ops_bad_arguments_name_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call()
