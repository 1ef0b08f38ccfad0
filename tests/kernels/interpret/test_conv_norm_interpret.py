"""Triton causal conv1d (+ decode step) and fused add+norm against the references, under TRITON_INTERPRET=1 on CPU.

Run through `tests/kernels/test_interpreter_suite.py`, or directly:
`TRITON_INTERPRET=1 MAMBALAB_KERNELS=triton python -m pytest tests/kernels/interpret -q`.
"""

from __future__ import annotations

import os

import pytest
import torch
from kernel_tolerance import assert_close
from layouts import LaunchSpy, channel_last_copy, is_channel_last, projection_views

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1", reason="Triton interpreter tests: run with TRITON_INTERPRET=1"
)

import kernels  # noqa: E402
from kernels.causal_conv1d import conv  # noqa: E402
from kernels.causal_conv1d import ref as conv_ref  # noqa: E402
from kernels.rms_norm import ref as norm_ref  # noqa: E402


def grads_of(fn, tensors: dict, upstream: list, *, upcast: bool, **kwargs):
    # detach, not clone: a view keeps its strides (the channel-last tests hand the kernels the mixer's views).
    leaves = {
        k: None if v is None else (v.float() if upcast else v).detach().requires_grad_() for k, v in tensors.items()
    }
    outs = fn(**leaves, **kwargs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    loss = sum((o.float() * g.float()).sum() for o, g in zip(outs, upstream))
    present = [k for k, v in leaves.items() if v is not None]
    return outs, dict(zip(present, torch.autograd.grad(loss, [leaves[k] for k in present])))


def compare(fast_fn, ref_fn, tensors, upstream, *, fast_tensors=None, fast_upstream=None, **kwargs):
    """`fast_fn` on `fast_tensors`/`fast_upstream` (default: the same; else the same values in another layout) against
    `ref_fn` on `tensors`, outputs and all gradients. Returns the fast path's (outputs, grads)."""
    with kernels.use_triton():
        fast = grads_of(fast_fn, fast_tensors or tensors, fast_upstream or upstream, upcast=False, **kwargs)
    lowp = grads_of(ref_fn, tensors, upstream, upcast=False, **kwargs)
    hi = grads_of(ref_fn, tensors, upstream, upcast=True, **kwargs)
    for i, (f, lo, h) in enumerate(zip(fast[0], lowp[0], hi[0])):
        assert_close(f"output {i}", f, lo, h)
    for name in fast[1]:
        assert_close(f"d{name}", fast[1][name], lowp[1][name], hi[1][name])
    return fast


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("seqlen", [1, 7, 65, 200])
@pytest.mark.parametrize("width", [2, 3, 4, 7])
def test_conv_all_options(width, seqlen, dtype):
    check_conv_all_options(width, seqlen, dtype)


def check_conv_all_options(width, seqlen, dtype):
    """Bias, SiLU, an initial state and the final state's gradient, time-major x, batch 2 of 5 channels."""
    batch, dim = 2, 5
    tensors = dict(
        x=torch.randn(batch, dim, seqlen).to(dtype),
        weight=torch.randn(dim, width) / width,
        bias=torch.randn(dim),
        initial_state=torch.randn(batch, dim, width - 1).to(dtype),
    )
    upstream = [torch.randn(batch, dim, seqlen).to(dtype), torch.randn(batch, dim, width - 1).to(dtype)]
    compare(
        kernels.causal_conv1d, conv_ref.causal_conv1d, tensors, upstream, activation="silu", return_final_state=True
    )


@pytest.fixture
def conv_spies(monkeypatch):
    """Spies on the kernels that read x: the forward, and the backward's (the one-pass kernel or pass 1)."""
    names = ("_causal_conv1d_fwd_kernel", "_causal_conv1d_bwd_kernel", "_causal_conv1d_bwd_dpre_kernel")
    spies = [LaunchSpy(getattr(conv, name)) for name in names]
    for name, spy in zip(names, spies, strict=True):
        monkeypatch.setattr(conv, name, spy)
    return spies


def check_conv_channel_last(spies, width, seqlen, dtype):
    # x is the first half of the mixer's in_proj output [b, l, 2d], transposed: read in place, out and dx channel-last.
    batch, dim = 2, 5
    tensors = dict(
        x=torch.randn(batch, dim, seqlen).to(dtype),
        weight=torch.randn(dim, width) / width,
        bias=torch.randn(dim),
        initial_state=torch.randn(batch, dim, width - 1).to(dtype),
    )
    x_view, _ = projection_views(tensors["x"], torch.randn(batch, dim, seqlen).to(dtype))
    upstream = [torch.randn(batch, dim, seqlen).to(dtype), torch.randn(batch, dim, width - 1).to(dtype)]
    (out, final), grads = compare(
        kernels.causal_conv1d,
        conv_ref.causal_conv1d,
        tensors,
        upstream,
        fast_tensors={**tensors, "x": x_view},
        fast_upstream=[channel_last_copy(upstream[0]), upstream[1]],
        activation="silu",
        return_final_state=True,
    )
    fwd, *bwd_kernels = spies
    (bwd,) = [spy for spy in bwd_kernels if spy.launches]
    assert fwd.read_in_place(0, x_view) and bwd.read_in_place(0, x_view), "channel-last x was copied"
    assert is_channel_last(out) and is_channel_last(grads["x"]), f"out {out.stride()}, dx {grads['x'].stride()}"
    assert final.is_contiguous()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("seqlen", [1, 7, 65])
@pytest.mark.parametrize("width", [2, 3, 4, 7])
def test_conv_channel_last(conv_spies, width, seqlen, dtype):
    check_conv_channel_last(conv_spies, width, seqlen, dtype)


@pytest.mark.parametrize("width", [4, 7])
def test_conv_channel_last_across_tiles(conv_spies, monkeypatch, width):
    # Small tiles: the sequence crosses time-tile boundaries and dim 5 leaves a partial channel block.
    monkeypatch.setattr(conv, "CONFIGS", {k: dict(BLOCK_D=4, BLOCK_L=16, num_warps=1) for k in conv.CONFIGS})
    check_conv_channel_last(conv_spies, width, 40, torch.float32)


@pytest.mark.parametrize("one_pass", [True, False], ids=["one-pass", "two-pass"])
@pytest.mark.parametrize("seqlen", [40, 37, 2])
@pytest.mark.parametrize(
    ("dtype", "width"),
    [(torch.bfloat16, 2), (torch.bfloat16, 4), (torch.bfloat16, 7), (torch.float32, 4), (torch.float32, 5)],
    ids=["bf16-w2", "bf16-w4", "bf16-w7", "fp32-w4", "fp32-w5"],
)
def test_conv_time_major_lane_shifts_across_tiles(monkeypatch, dtype, width, seqlen, one_pass):
    # Time-major x: every kernel builds its shifted taps from two aligned vector loads (the tile and the vector before
    # or after it, `conv._shifted`), and the one-pass backward recomputes dpre on the first lanes of the vector after
    # its tile. Small tiles put those neighbour vectors in the next or previous tile and in the initial state; seqlen
    # 37 ends inside a vector, 2 is shorter than the final state at width >= 4 (it reaches into the initial state);
    # dim 5 leaves a partial channel block.
    monkeypatch.setattr(conv, "CONFIGS", {k: dict(BLOCK_D=4, BLOCK_L=16, num_warps=1) for k in conv.CONFIGS})
    monkeypatch.setattr(conv, "ONE_PASS_BACKWARD", one_pass)
    backward = ("_causal_conv1d_bwd_kernel",)
    if not one_pass:
        backward = ("_causal_conv1d_bwd_dpre_kernel", "_causal_conv1d_bwd_dx_kernel")
    names = ("_causal_conv1d_fwd_kernel", *backward)
    spies = {name: LaunchSpy(getattr(conv, name)) for name in names}
    for name, spy in spies.items():
        monkeypatch.setattr(conv, name, spy)
    check_conv_all_options(width, seqlen, dtype)
    vec = 16 // torch.empty(0, dtype=dtype).element_size()
    for name, spy in spies.items():
        assert [c["VEC"] for c in spy.constants] == [vec], f"{name} did not take the lane-shift path: {spy.constants}"


def test_conv_time_major_outputs_stay_contiguous():
    tensors = dict(x=torch.randn(2, 3, 9), weight=torch.randn(3, 4))
    (out,), grads = compare(
        kernels.causal_conv1d, conv_ref.causal_conv1d, tensors, [torch.randn(2, 3, 9)], activation="silu"
    )
    assert out.is_contiguous() and grads["x"].is_contiguous()


@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("has_bias", [False, True])
def test_conv_without_state(activation, has_bias):
    batch, dim, seqlen, width = 2, 3, 33, 4
    tensors = dict(
        x=torch.randn(batch, dim, seqlen), weight=torch.randn(dim, width), bias=torch.randn(dim) if has_bias else None
    )
    compare(
        kernels.causal_conv1d, conv_ref.causal_conv1d, tensors, [torch.randn(batch, dim, seqlen)], activation=activation
    )


def test_conv_final_state_without_initial_state_short_sequence():
    tensors = dict(x=torch.randn(2, 3, 2), weight=torch.randn(3, 5))
    upstream = [torch.randn(2, 3, 2), torch.randn(2, 3, 4)]
    compare(
        kernels.causal_conv1d, conv_ref.causal_conv1d, tensors, upstream, activation="silu", return_final_state=True
    )


@pytest.mark.parametrize("width,state_len", [(2, 2), (4, 4), (4, 6), (7, 9)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_conv_update_matches_reference(width, state_len, dtype):
    batch, dim = 2, 5
    x, weight, bias = torch.randn(batch, dim).to(dtype), torch.randn(dim, width), torch.randn(dim)
    state = torch.randn(batch, dim, state_len).to(dtype)
    fast_state, lowp_state, hi_state = state.clone(), state.clone(), state.float()
    with kernels.use_triton():
        fast = kernels.causal_conv1d_update(x, fast_state, weight, bias, activation="silu")
    lowp = conv_ref.causal_conv1d_update(x, lowp_state, weight, bias, activation="silu")
    hi = conv_ref.causal_conv1d_update(x.float(), hi_state, weight, bias, activation="silu")
    assert_close("out", fast, lowp, hi)
    torch.testing.assert_close(fast_state, lowp_state, atol=0, rtol=0)


@pytest.mark.parametrize("width", [2, 4])
def test_conv_update_shortest_state_steps_equal_full_conv(width):
    # state_len == width - 1 (the reference's update needs state_len >= width; compare with the full conv instead).
    batch, dim, seqlen = 2, 3, 6
    x, weight, bias = torch.randn(batch, dim, seqlen), torch.randn(dim, width), torch.randn(dim)
    init = torch.randn(batch, dim, width - 1)
    expected, final = conv_ref.causal_conv1d(
        x, weight, bias, activation="silu", initial_state=init, return_final_state=True
    )
    state = init.clone()
    with kernels.use_triton():
        outs = [kernels.causal_conv1d_update(x[..., t], state, weight, bias, activation="silu") for t in range(seqlen)]
    torch.testing.assert_close(torch.stack(outs, -1), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, final)


@pytest.mark.parametrize("norm", ["rms_norm", "layer_norm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "has_residual,prenorm,residual_in_fp32,has_bias",
    [
        (False, False, False, False),
        (True, False, False, True),
        (True, True, False, False),
        (True, True, True, True),
        (False, True, True, False),
    ],
)
def test_add_norm(norm, dtype, has_residual, prenorm, residual_in_fp32, has_bias):
    shape, hidden = (2, 3, 40), 40
    tensors = dict(
        x=torch.randn(shape).to(dtype),
        weight=1 + 0.1 * torch.randn(hidden),
        bias=torch.randn(hidden) if has_bias else None,
        residual=torch.randn(shape).to(dtype) if has_residual else None,
    )
    upstream = [torch.randn(shape).to(dtype), torch.randn(shape)]
    compare(
        getattr(kernels, norm),
        getattr(norm_ref, norm),
        tensors,
        upstream,
        eps=1e-5,
        prenorm=prenorm,
        residual_in_fp32=residual_in_fp32,
    )
