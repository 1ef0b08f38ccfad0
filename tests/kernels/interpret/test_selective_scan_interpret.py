"""Triton selective scan (forward, backward, decode step) against the reference, under TRITON_INTERPRET=1 on CPU.

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
from kernels.selective_scan import ref, scan  # noqa: E402

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
SEQUENCES = ("u", "delta", "z", "B", "C")


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
    """Outputs and all input gradients of `fn`, inputs upcast to fp32 when `upcast` (else in their own memory: detach
    keeps a view's strides, clone would not). With `dlast` None the loss does not use the last state."""
    leaves = {
        k: (None if v is None else (v.float() if upcast else v).detach().requires_grad_()) for k, v in inputs.items()
    }
    out, last = fn(**leaves, delta_softplus=delta_softplus, return_last_state=True)
    loss = (out.float() * dout.float()).sum() + (0 if dlast is None else (last * dlast).sum())
    present = [k for k in NAMES if leaves[k] is not None]
    grads = dict(zip(present, torch.autograd.grad(loss, [leaves[k] for k in present])))
    return out, last, grads


def check(inputs, *, delta_softplus=True, fast_inputs=None, fast_dout=None, with_dlast=True):
    """The Triton scan on `fast_inputs` (default `inputs`: the same values in another memory layout) against the
    references on `inputs`: out, last state and every gradient (of a loss on out and, `with_dlast`, on the last
    state). Returns the Triton path's (out, last, grads)."""
    u = inputs["u"]
    dout = torch.randn(u.shape).to(u.dtype)
    dlast = torch.randn(u.shape[0], u.shape[1], inputs["A"].shape[1]) if with_dlast else None
    with kernels.use_triton():
        fast = run(
            kernels.selective_scan,
            inputs if fast_inputs is None else fast_inputs,
            dout if fast_dout is None else fast_dout(dout),
            dlast,
            upcast=False,
            delta_softplus=delta_softplus,
        )
    lowp = run(ref.selective_scan, inputs, dout, dlast, upcast=False, delta_softplus=delta_softplus)
    hi = run(ref.selective_scan, inputs, dout, dlast, upcast=True, delta_softplus=delta_softplus)
    assert_close("out", fast[0], lowp[0], hi[0])
    assert_close("last_state", fast[1], lowp[1], hi[1])
    for name in fast[2]:
        assert_close(f"d{name}", fast[2][name], lowp[2][name], hi[2][name])
    return fast


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
@pytest.mark.parametrize("scatter", [True, False], ids=["scatter", "all-reduce"])
def test_scan_dB_dC_reductions(monkeypatch, reduction, groups, scatter):
    # Across programs: atomics or partial slices; within one (two 8-channel blocks, 4-step chunks): a reduce-scatter
    # over the channels or a full sum over them per step.
    from kernels.selective_scan import scan

    monkeypatch.setattr(scan, "DBC_REDUCTION", reduction)
    monkeypatch.setattr(scan, "DBC_SCATTER", scatter)
    check(make_inputs(2, 16, 30, 4, torch.float32, groups=groups))


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


# Channel-last memory: the mixer's in_proj/x_proj outputs are [batch, seqlen, channels]; the kernels read their
# transposed views without a copy and lay out out/du/ddelta/dz/dB/dC the same way.


def mixer_layout(inputs, *, dt_rank=3, time_major=()):
    """`inputs` with the sequences replaced by channel-last views holding the same values, as the mixer makes them:
    u and z halves of one in_proj output `[b, l, 2d]`, delta a transposed `[b, l, d]`, B and C slices of one x_proj
    output `[b, l, dt_rank + 2 g n]` after its dt columns. Names in `time_major` stay as they are."""
    views = dict(inputs)
    u, z, B, C = (inputs[k] for k in ("u", "z", "B", "C"))
    views["u"], views["z"] = projection_views(u, z) if z is not None else (*projection_views(u), None)
    views["delta"] = channel_last_copy(inputs["delta"])
    _, views["B"], views["C"] = projection_views(B.new_zeros(u.shape[0], dt_rank, u.shape[-1]), B, C)
    views.update({k: inputs[k] for k in time_major})
    return views


def reads_time_major(spy, launch: int) -> bool:
    """Whether every tensor of a launch has unit stride on its last axis: the backward kernel reads time-major
    sequences only (channel-last ones are staged as copies, see scan._selective_scan_bwd)."""
    return all(t.stride(-1) == 1 for t in spy.launches[launch] if t.dim() >= 2)


@pytest.fixture
def spies(monkeypatch):
    fwd, bwd = LaunchSpy(scan._selective_scan_fwd_kernel), LaunchSpy(scan._selective_scan_bwd_kernel)
    monkeypatch.setattr(scan, "_selective_scan_fwd_kernel", fwd)
    monkeypatch.setattr(scan, "_selective_scan_bwd_kernel", bwd)
    return fwd, bwd


def check_channel_last(inputs, spies, *, time_major=()):
    views = mixer_layout(inputs, time_major=time_major)
    out, _, grads = check(inputs, fast_inputs=views, fast_dout=channel_last_copy)
    fwd, bwd = spies
    sequences = [views[k] for k in SEQUENCES]
    assert len(fwd.launches) == len(bwd.launches) == 1
    assert fwd.read_in_place(0, *sequences), "a channel-last input was copied before the forward kernel"
    assert reads_time_major(bwd, 0), "the backward kernel got a channel-last sequence"
    assert is_channel_last(out), f"out strides {out.stride()}"
    for name in SEQUENCES:
        if views[name] is None:
            continue
        grad = grads[name]
        expected = "time-major" if name in time_major else "channel-last"
        layout = "channel-last" if is_channel_last(grad) else "time-major" if grad.is_contiguous() else "other"
        assert layout == expected, f"d{name} is {layout} (strides {grad.stride()}), expected {expected}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("seqlen", [1, 7, 65])
def test_scan_channel_last(spies, seqlen, dtype):
    check_channel_last(make_inputs(2, 5, seqlen, 4, dtype), spies)


@pytest.mark.parametrize("reduction", ["atomics", "partials"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_scan_channel_last_grouped(spies, monkeypatch, dtype, reduction):
    monkeypatch.setattr(scan, "DBC_REDUCTION", reduction)
    check_channel_last(make_inputs(2, 6, 33, 6, dtype, groups=3), spies)


def test_scan_channel_last_mixed_layouts_without_z(spies):
    # Each sequence carries its own strides: time-major delta and C beside channel-last u and B.
    inputs = make_inputs(2, 4, 20, 4, torch.float32, has_z=False, has_bias=False, has_init=False)
    check_channel_last(inputs, spies, time_major=("delta", "C"))


def test_scan_time_major_outputs_stay_contiguous():
    inputs = make_inputs(2, 5, 9, 4, torch.bfloat16)
    out, _, grads = check(inputs)
    assert out.is_contiguous()
    assert all(grads[k].is_contiguous() for k in SEQUENCES)


def test_scan_copies_only_a_sequence_with_neither_unit_stride(spies):
    # Every other channel and step of a larger tensor: neither the time nor the channel stride is 1.
    inputs = make_inputs(2, 4, 7, 4, torch.float32)
    strided = torch.zeros(2, 8, 14)
    strided[:, ::2, ::2] = inputs["u"]
    views = {**mixer_layout(inputs), "u": strided[:, ::2, ::2]}
    with kernels.use_triton(), torch.no_grad():
        out = kernels.selective_scan(**views, delta_softplus=True)
    expected = ref.selective_scan(**inputs, delta_softplus=True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    u_seen = spies[0].launches[0][0]
    assert u_seen.data_ptr() != views["u"].data_ptr() and u_seen.stride(-1) == 1
    assert spies[0].read_in_place(0, *(views[k] for k in SEQUENCES if k != "u"))


# Sequence-parallel (segmented) scan: forced tiny segments so several occur on CPU. Segment boundaries are where the
# forward's carried start states and the backward's carried adjoints (and the a[t+1] read at a segment's last step)
# can go wrong; lengths that leave a short last segment and a partial last chunk are the ones to check.


def copied_configs() -> dict:
    """A deep copy of scan.CONFIGS for a test to edit and monkeypatch in."""
    return {kind: {n: dict(cfg) for n, cfg in table.items()} for kind, table in scan.CONFIGS.items()}


@pytest.fixture
def segments(monkeypatch):
    """`segments(fwd, bwd, block_l=None)`: force the forward's and the backward's segment lengths (steps), and
    optionally the chunk length BLOCK_L shared by both directions."""

    def force(fwd, bwd, block_l=None):
        monkeypatch.setitem(scan.SEGMENT_LEN, "fwd", fwd)
        monkeypatch.setitem(scan.SEGMENT_LEN, "bwd", bwd)
        if block_l is not None:
            configs = copied_configs()
            for table in configs.values():
                for cfg in table.values():
                    cfg["BLOCK_L"] = block_l
            for cfg in configs["bwd"].values():
                cfg["SAVE_EVERY"] = 1
            monkeypatch.setattr(scan, "CONFIGS", configs)

    return force


def count_launches(monkeypatch):
    """Spies on the three scan kernels; returns {kernel name: LaunchSpy}."""
    spied = {}
    for name in ("_selective_scan_fwd_kernel", "_selective_scan_bwd_kernel", "_segment_carry_kernel"):
        spied[name] = LaunchSpy(getattr(scan, name))
        monkeypatch.setattr(scan, name, spied[name])
    return spied


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "seqlen,fwd_len,bwd_len,block_l",
    [(7, 4, 4, 4), (65, 16, 32, 8), (200, 32, 8, 8)],
    ids=["7-seg4-bl4", "65-seg16/32", "200-seg32/8"],
)
def test_scan_segmented_all_options(monkeypatch, segments, seqlen, fwd_len, bwd_len, block_l, dtype):
    # 7 steps in segments of 4 (2 each way); 65 = 4 full forward segments + 1 step (3 backward segments, the last a
    # single partial chunk); 200 = 7 forward segments, 25 one-chunk backward segments.
    segments(fwd_len, bwd_len, block_l)
    spied = count_launches(monkeypatch)
    check(make_inputs(2, 5, seqlen, 16 if seqlen == 200 else 4, dtype))
    fwd, bwd, carry = (len(s.launches) for s in spied.values())
    assert (fwd, bwd, carry) == (2, 2, 2), f"expected pass 1 + pass 2 each way and two carries, got {fwd, bwd, carry}"


@pytest.mark.parametrize(
    "fwd,bwd",
    [
        (dict(BLOCK_D=32), dict(BLOCK_D=16)),
        (dict(BLOCK_D=16), dict(BLOCK_D=8)),
        (dict(BLOCK_D=4), dict(BLOCK_D=2)),
        (dict(BLOCK_D=8, BLOCK_L=4), dict(BLOCK_D=32, BLOCK_L=4, SAVE_EVERY=1)),
        (dict(BLOCK_D=8, BLOCK_L=8), dict(BLOCK_D=8, BLOCK_L=4, SAVE_EVERY=2)),
        (dict(BLOCK_D=8, BLOCK_L=8), dict(BLOCK_D=4, BLOCK_L=2, SAVE_EVERY=4)),
    ],
    ids=["d32/d16", "d16/d8", "d4/d2", "chunk4-d8/d32", "half-chunks-d8/d8", "quarter-chunks-d8/d4"],
)
@pytest.mark.parametrize("seqlen,bwd_len", [(1, None), (37, None), (61, 16)], ids=["1", "37", "61-seg16"])
def test_scan_block_shapes(monkeypatch, segments, fwd, bwd, seqlen, bwd_len):
    # The launch shapes change how the backward's tiles are laid out (states inside a thread or over 2-16 lanes), the
    # chunk length and how many backward chunks share one saved state (SAVE_EVERY): every choice computes the same
    # function.
    configs = copied_configs()
    for cfg in configs["fwd"].values():
        cfg.update(fwd)
    for cfg in configs["bwd"].values():
        cfg.update(bwd)
    monkeypatch.setattr(scan, "CONFIGS", configs)
    if bwd_len is not None:
        segments(None, bwd_len)
    check(make_inputs(2, 37, seqlen, 16, torch.float32))


@pytest.mark.parametrize(
    "save_every,dtype,groups",
    [(2, torch.float32, None), (2, torch.bfloat16, 2), (4, torch.float32, 2)],
    ids=["half-fp32", "half-bf16-grouped", "quarter-fp32-grouped"],
)
def test_scan_backward_segments_between_saved_states(monkeypatch, segments, save_every, dtype, groups):
    # Backward chunks shorter than the forward's (several per saved state), in segments of 12 steps: most segments
    # start and end between two saved states, so their chunks begin with the walk from the last saved state.
    configs = copied_configs()
    configs["fwd"][16].update(BLOCK_D=8, BLOCK_L=8)
    configs["bwd"][16].update(BLOCK_D=4, BLOCK_L=8 // save_every, SAVE_EVERY=save_every)
    monkeypatch.setattr(scan, "CONFIGS", configs)
    segments(None, 12)
    check(make_inputs(2, 6, 61, 16, dtype, groups=groups))


@pytest.mark.parametrize("groups", [None, 2])
def test_scan_backward_wide_offsets(monkeypatch, segments, groups):
    # The backward's per-state offsets in 64 bits (taken where they could pass int32) give the same results.
    monkeypatch.setattr(scan, "INT32_OFFSET_LIMIT", 0)
    assert scan._wide_offsets(16, 8, (0, 0, 1, 16))
    segments(None, 16)
    check(make_inputs(2, 6, 40, 16, torch.float32, groups=groups))


def test_scan_chunks_must_match(monkeypatch):
    # The backward's chunks tile the forward's (one saved state each).
    configs = copied_configs()
    configs["fwd"][16]["BLOCK_L"], configs["bwd"][16]["BLOCK_L"], configs["bwd"][16]["SAVE_EVERY"] = 8, 4, 1
    monkeypatch.setattr(scan, "CONFIGS", configs)
    with pytest.raises(ValueError, match="must equal the forward's"):
        scan._check_chunks(16)


@pytest.mark.parametrize(
    "options",
    [
        dict(has_D=False, has_z=False, has_bias=False, has_init=False),
        dict(has_D=True, has_z=True, has_bias=True, has_init=True),
    ],
    ids=["bare-no-softplus", "all"],
)
def test_scan_segmented_without_dlast(segments, options):
    # No gradient into the last state: the backward's carry starts from zero (and without an initial state the
    # forward's from zero too).
    segments(16, 16)
    inputs = make_inputs(2, 3, 50, 4, torch.float32, **options)
    softplus = options["has_bias"]
    if not softplus:  # keep dt > 0 so the system stays stable
        inputs["delta"] = 0.1 + 0.5 * torch.rand(inputs["delta"].shape)
    check(inputs, delta_softplus=softplus, with_dlast=False)


@pytest.mark.parametrize("reduction", ["atomics", "partials"])
def test_scan_segmented_grouped(monkeypatch, segments, reduction):
    monkeypatch.setattr(scan, "DBC_REDUCTION", reduction)
    segments(16, 8)
    check(make_inputs(2, 6, 40, 6, torch.bfloat16, groups=3))


def test_scan_segmented_channel_last(monkeypatch, segments):
    # Mixer memory through every launch of both passes, without copies; outputs and gradients channel-last.
    segments(8, 16)
    spied = count_launches(monkeypatch)
    inputs = make_inputs(2, 5, 33, 4, torch.float32)
    views = mixer_layout(inputs)
    out, _, grads = check(inputs, fast_inputs=views, fast_dout=channel_last_copy)
    sequences = [views[k] for k in SEQUENCES]
    fwd, bwd = spied["_selective_scan_fwd_kernel"], spied["_selective_scan_bwd_kernel"]
    assert len(fwd.launches) == len(bwd.launches) == 2
    assert all(fwd.read_in_place(i, *sequences) for i in range(2)), "an input was copied before the forward"
    assert all(reads_time_major(bwd, i) for i in range(2)), "the backward got a channel-last sequence"
    assert is_channel_last(out) and all(is_channel_last(grads[k]) for k in SEQUENCES)


@pytest.mark.parametrize("kind", ["fwd", "bwd"])
def test_segment_plan_on_an_h100(monkeypatch, kind):
    # The automatic choice, for an H100's 132 SMs: model-size batches keep the single-segment grid and its block
    # shapes (unchanged speed there); batch-1 long sequences get segments with SEGMENT_BLOCK_D's channel blocks;
    # short sequences with a small batch keep the older remedy (a smaller channel block).
    monkeypatch.setattr(scan, "_num_sms", lambda device: 132)
    block_d, block_l = scan._config(kind, 16)["BLOCK_D"], scan._config(kind, 16)["BLOCK_L"]
    seg_block_d = scan.SEGMENT_BLOCK_D[kind][16]

    def plan(batch, dim, seqlen, groups=1):
        via_tables = scan._direction_plan(kind, 16, batch, dim, seqlen, groups, "cuda")[1:]
        assert via_tables == scan._plan(kind, block_d, block_l, batch, dim, seqlen, groups, "cuda", seg_block_d)
        return via_tables

    assert plan(8, 1536, 2048) == (block_d, 2048, 1)
    assert plan(4, 5120, 2048) == (block_d, 2048, 1)
    got_block_d, seg_len, n_segments = plan(1, 1536, 65536)
    assert got_block_d == seg_block_d and n_segments > 1 and seg_len % block_l == 0
    assert seg_len >= scan.SEGMENT_MIN_LEN
    assert seg_len * (n_segments - 1) < 65536 <= seg_len * n_segments
    assert 1536 // seg_block_d * n_segments >= scan.MIN_PROGRAMS_PER_SM[kind] * 132
    underfilled = 2 * 2048 // block_d < scan.MIN_PROGRAMS_PER_SM[kind] * 132
    assert (plan(2, 2048, 16384)[2] > 1) == underfilled
    assert plan(1, 1536, 1024)[2] == 1 and plan(1, 1536, 1024)[0] < block_d
    assert plan(1, 1536, 2048)[2] == 1, "two segments timed slower than smaller channel blocks"
    assert plan(1, 1536, 4096)[2] >= scan.MIN_SEGMENTS
    assert plan(1, 1536, 65536, groups=4)[0] == seg_block_d  # 384 channels per group: the block still fits
    # Without a segment block, segments keep the configured one.
    assert scan._plan(kind, block_d, block_l, 1, 1536, 65536, 1, "cuda")[0] == block_d


def test_segment_len_must_be_a_multiple_of_the_chunk(segments):
    segments(12, None)
    inputs = make_inputs(1, 2, 40, 4, torch.float32)
    with kernels.use_triton(), torch.no_grad(), pytest.raises(ValueError, match="multiple of BLOCK_L"):
        kernels.selective_scan(**inputs, delta_softplus=True)


def test_register_cap_fits_the_grid_in_one_wave(monkeypatch):
    # An H100: 132 SMs of 65536 registers. The configured backward cap (168) fits 12 one-warp programs per SM: the
    # 130M grid (8 x 1536 / 8 channels = 1536 programs) keeps it; the 370M grid (2048 programs, 16 per SM) gets 128;
    # grids that would need a cap under MIN_REGISTER_CAP, and configs without a cap, are left alone.
    monkeypatch.setattr(scan, "_num_sms", lambda device: 132)
    monkeypatch.setattr(scan, "_sm_registers", lambda device: 65536)
    cfg = dict(BLOCK_L=4, num_warps=1, maxnreg=168)
    cuda = torch.device("cuda")
    assert scan._register_cap(cfg, 1536, cuda) == cfg
    assert scan._register_cap(cfg, 2048, cuda) == {**cfg, "maxnreg": 128}
    assert scan._register_cap(cfg, 132 * 14, cuda)["maxnreg"] == 144  # 65536 / (14 * 32) = 146 -> 144
    assert scan._register_cap(cfg, 2560, cuda) == cfg  # 20 per SM would need 102
    assert scan._register_cap(dict(BLOCK_L=4, num_warps=1), 2048, cuda) == dict(BLOCK_L=4, num_warps=1)
    assert scan._register_cap({**cfg, "num_warps": 2}, 1024, cuda)["maxnreg"] == 128  # 8 two-warp programs per SM
    monkeypatch.undo()
    assert scan._register_cap(cfg, 2048, torch.device("cpu")) == cfg
