"""Depthwise causal conv1d (+ SiLU) in Triton: forward and backward kernels.

Math (the spec is `kernels/causal_conv1d/ref.py`), per channel d, width W, with `xp[p] = x[p]` for `p >= 0` and
`xp[p] = initial_state[W - 1 + p]` (or 0) for `-(W-1) <= p < 0`::

    pre[t] = bias + sum_{k<W} w[k] * xp[t - (W-1) + k]          out[t] = act(pre[t])

Backward, with `dpre[s] = dout[s] * act'(pre[s])` for `0 <= s < L` (0 elsewhere)::

    dxp[t]   = sum_k w[k] * dpre[t + (W-1) - k]    for -(W-1) <= t < L  (t < 0 gives d initial_state)
               + d final_state[t - (L - (W-1))]      where t >= L - (W-1)
    dw[k]    = sum_{b, s} dpre[s] * xp[s - (W-1) + k]          dbias = sum_{b, s} dpre[s]

Each program owns a `[BLOCK_D, BLOCK_L]` tile of one sequence. The shifted reads of x overlap between neighbouring
taps and tiles and are served by the caches, so the forward moves about one read of x and one write of out.

Time-major memory (time at unit stride, the mixer's layout): a tap shifted by 1..W-1 steps is not aligned to the
16-byte vectors a thread loads, so loading it directly costs one 2-byte load per element. Instead each kernel loads
its tile and the vector before (or after) it, both aligned, and assembles the shifted taps from their lanes in
registers (`_lanes`, `_shifted`: reshape/split/join that only rename registers). The backward is then one pass
(`_causal_conv1d_bwd_kernel`): dx at the tile needs dpre at the tile and at the first W-1 lanes of the vector after
it, and those few lanes are recomputed from x instead of dpre making a round trip through memory.

Channel-last memory (or widths past one vector, or `ONE_PASS_BACKWARD` off): a load per tap, and the backward in two
passes: the first recomputes `pre` once per output position, stores `dpre` (in dout's dtype, with the SiLU; without
it dpre is dout) and sums dw/dbias (fp32 atomics across programs); the second forms dx from W shifted reads of dpre.
(A one-pass backward built from shifted loads needs dpre at W shifted positions per tile: W recomputations of pre,
W^2 shifted loads of x and W sigmoids per element, which is what an earlier version did, at ~300 us for (8, 1536,
2048) on an H100.)

x, out, dout and dx are addressed through (batch, channel, time) strides, so time-major memory and channel-last memory
(a transposed `[batch, seqlen, dim]`, channel stride 1, as the mixer's in_proj gives it) both go through without a
copy; out and dx take x's layout. Tile shapes are per layout and pass (CONFIGS).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._triton_utils import call_op, channel_last, empty, empty_sequence, sequence_strides, unit_stride

__all__ = ["causal_conv1d"]

# Tile shapes per pass and memory layout, the fastest of `benchmarks/kernels.py --sweep-conv` on an H100 (GPU time of
# (8, 1536, 2048) bf16, CUDA graphs; see kernels/NOTES.md). Time-major = time at unit stride; channel-last = channels
# at unit stride (e.g. a transposed `[batch, seqlen, dim]`): wide channel blocks, short time tiles. The backward's two
# passes ("bwd_dpre": dpre, dw, dbias; "bwd_dx": dx from dpre) have a tile each; the time-major ones are session 13's
# sweep at (8, 2048, 2048) and (8, 1536, 2048), the mixer's shapes in a 370M and a 130M training step. "bwd" is the
# one-pass backward (session 14): pass 1's tile, best of ten in session 15's sweep at (8, 2048, 2048) (kernels/NOTES.md).
CONFIGS = {
    "fwd": dict(BLOCK_D=8, BLOCK_L=256, num_warps=4),
    "bwd": dict(BLOCK_D=8, BLOCK_L=128, num_warps=4),
    "bwd_dpre": dict(BLOCK_D=8, BLOCK_L=128, num_warps=4),
    "bwd_dx": dict(BLOCK_D=4, BLOCK_L=256, num_warps=2),
    "fwd_channel_last": dict(BLOCK_D=128, BLOCK_L=16, num_warps=4),
    "bwd_dpre_channel_last": dict(BLOCK_D=32, BLOCK_L=64, num_warps=4),
    "bwd_dx_channel_last": dict(BLOCK_D=32, BLOCK_L=64, num_warps=4),
}


# The backward in one pass ("bwd" tile) where the taps come from lane shifts (time-major x), else in two passes. A
# module switch so that benchmarks can time both in one process.
ONE_PASS_BACKWARD = True


def _config(kind: str, x: torch.Tensor) -> dict:
    return dict(CONFIGS[f"{kind}_channel_last" if channel_last(x) else kind])


def _lane_shifts(x: torch.Tensor, width: int, cfg: dict) -> dict:
    """VEC / LOG2_VEC for the kernels: the steps in one 16-byte vector when the shifted taps are built from aligned
    vector loads (time-major x, all W-1 shifts within one vector), else VEC 0 (a load per tap)."""
    vec = 16 // x.element_size()
    if channel_last(x) or width - 1 > vec or cfg["BLOCK_L"] % vec:
        return dict(VEC=0, LOG2_VEC=0)
    return dict(VEC=vec, LOG2_VEC=vec.bit_length() - 1)


@triton.jit
def _load_xp(x_rows, stride_x_l, init_rows, p, seqlen, mask_d, WIDTH: tl.constexpr, HAS_INITIAL_STATE: tl.constexpr):
    """`xp[p]` as fp32 `[BLOCK_D, BLOCK_L]`: x where `0 <= p < seqlen`, the initial state where `p < 0`, else 0."""
    x_ptrs = x_rows + p.to(tl.int64)[None, :] * stride_x_l  # time offsets are strided (channel-last) and may pass 2^31
    val = tl.load(x_ptrs, mask=mask_d[:, None] & ((p >= 0) & (p < seqlen))[None, :], other=0.0)
    val = val.to(tl.float32)
    if HAS_INITIAL_STATE:
        in_state = (p < 0) & (p >= -(WIDTH - 1))
        hist = tl.load(init_rows + (WIDTH - 1 + p)[None, :], mask=mask_d[:, None] & in_state[None, :], other=0.0)
        val += hist.to(tl.float32)
    return val


@triton.jit
def _halves(x):
    """`[R, N, W]` -> the steps `[0, W/2)` and `[W/2, W)` of each vector, two `[R, N, W/2]` (register renaming when
    W is inside each thread, as in a vectorised load)."""
    R: tl.constexpr = x.shape[0]
    N: tl.constexpr = x.shape[1]
    W: tl.constexpr = x.shape[2]
    lo, hi = tl.split(tl.permute(tl.reshape(x, [R, N, 2, W // 2]), [0, 1, 3, 2]))
    return lo, hi


@triton.jit
def _concat(lo, hi):
    """The inverse of `_halves`: two `[R, N, W]` -> `[R, N, 2W]`."""
    R: tl.constexpr = lo.shape[0]
    N: tl.constexpr = lo.shape[1]
    W: tl.constexpr = lo.shape[2]
    return tl.reshape(tl.permute(tl.join(lo, hi), [0, 1, 3, 2]), [R, N, 2 * W])


@triton.jit
def _lanes(x, VEC: tl.constexpr, LOG2_VEC: tl.constexpr):
    """`[R, L]` -> a tuple of VEC `[R, L/VEC, 1]`: entry v holds steps v, VEC + v, 2 VEC + v, ..."""
    parts = (tl.reshape(x, [x.shape[0], x.shape[1] // VEC, VEC]),)
    for level in tl.static_range(LOG2_VEC):
        split = ()
        for i in tl.static_range(1 << level):
            lo, hi = _halves(parts[i])
            split = split + (lo, hi)
        parts = split
    return parts


@triton.jit
def _from_lanes(parts, VEC: tl.constexpr, LOG2_VEC: tl.constexpr):
    """The inverse of `_lanes`: a tuple of VEC `[R, N, 1]` -> `[R, N * VEC]`."""
    for level in tl.static_range(LOG2_VEC):
        joined = ()
        for i in tl.static_range(VEC >> (level + 1)):
            joined = joined + (_concat(parts[2 * i], parts[2 * i + 1]),)
        parts = joined
    return tl.reshape(parts[0], [parts[0].shape[0], parts[0].shape[1] * VEC])


@triton.jit
def _shifted_lanes(cur_lanes, other_lanes, SHIFT: tl.constexpr, VEC: tl.constexpr):
    """`_shifted` on tiles already split into lanes (`_lanes`); returns the lanes of the shifted tile."""
    parts = ()
    for v in tl.static_range(VEC):
        if v - SHIFT >= 0 and v - SHIFT < VEC:
            parts = parts + (cur_lanes[v - SHIFT],)
        else:
            parts = parts + (other_lanes[(v - SHIFT + VEC) % VEC],)
    return parts


@triton.jit
def _shifted(cur, other, SHIFT: tl.constexpr, VEC: tl.constexpr, LOG2_VEC: tl.constexpr):
    """`y[:, t] = x[:, t - SHIFT]` `[R, L]` for `0 < |SHIFT| <= VEC`, from `cur = x[:, t]` and `other = x[:, t - VEC]`
    (SHIFT > 0) or `x[:, t + VEC]` (SHIFT < 0), both `[R, L]`, L a multiple of VEC.

    A load at a shift that is not a multiple of the vector breaks its alignment, so it issues one 2-byte load per
    element (48 a thread for the three taps of a width-4 conv). Here both inputs are aligned vector loads and the
    shifted tile is assembled from their lanes inside each thread: which lane lands where is known at compile time,
    so the split and the joins are register renaming (`benchmarks/sass_report.py --conv`: no shuffles, no shared
    memory)."""
    lanes = _shifted_lanes(_lanes(cur, VEC, LOG2_VEC), _lanes(other, VEC, LOG2_VEC), SHIFT, VEC)
    return _from_lanes(lanes, VEC, LOG2_VEC)


@triton.jit
def _taps(x_rows, stride_x_l, init_rows, t, seqlen, mask_d, WIDTH: tl.constexpr, HAS_INITIAL_STATE: tl.constexpr,
          VEC: tl.constexpr, LOG2_VEC: tl.constexpr):  # fmt: skip
    """The W taps of output positions `t` `[BLOCK_L]`: a tuple, entry k `xp[t - (W-1) + k]` fp32 `[BLOCK_D, BLOCK_L]`.
    With VEC (time-major x), two aligned vector loads and lanes moved in registers (`_shifted`); else a load a tap."""
    taps = ()
    if VEC > 0:
        cur = _load_xp(x_rows, stride_x_l, init_rows, t, seqlen, mask_d, WIDTH, HAS_INITIAL_STATE)
        prev = _load_xp(x_rows, stride_x_l, init_rows, t - VEC, seqlen, mask_d, WIDTH, HAS_INITIAL_STATE)
        for k in tl.static_range(WIDTH - 1):
            taps = taps + (_shifted(cur, prev, WIDTH - 1 - k, VEC, LOG2_VEC),)
        taps = taps + (cur,)
    else:
        for k in tl.static_range(WIDTH):
            taps = taps + (_load_xp(x_rows, stride_x_l, init_rows, t - (WIDTH - 1) + k, seqlen, mask_d, WIDTH,
                                    HAS_INITIAL_STATE),)  # fmt: skip
    return taps


@triton.jit
def _weight(w_ptr, offs_d, stride_w_d, mask_d, k: tl.constexpr):
    """Tap k of the weights of channels `offs_d`, fp32 `[BLOCK_D]`."""
    return tl.load(w_ptr + offs_d.to(tl.int64) * stride_w_d + k, mask=mask_d, other=0.0).to(tl.float32)


@triton.jit
def _pre_activation(taps, w_ptr, bias_ptr, offs_d, stride_w_d, mask_d, WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr):
    """`bias + sum_k w[k] * taps[k]`, fp32, the shape of the taps (`[BLOCK_D, BLOCK_L]`)."""
    pre = tl.zeros_like(taps[0])
    if HAS_BIAS:
        pre += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    for k in tl.static_range(WIDTH):
        pre += _weight(w_ptr, offs_d, stride_w_d, mask_d, k)[:, None] * taps[k]
    return pre


@triton.jit
def _silu_grad(dout, pre):
    """`dout * silu'(pre)`, fp32."""
    sig = tl.sigmoid(pre)
    return dout * sig * (1.0 + pre * (1.0 - sig))


@triton.jit
def _add_dw_dbias(dw_ptr, dbias_ptr, dpre, taps, offs_d, mask_d, WIDTH: tl.constexpr, HAS_BIAS: tl.constexpr,
                  BLOCK_D: tl.constexpr, BLOCK_W: tl.constexpr):  # fmt: skip
    """Add this tile's `dw[j] = sum_s dpre[s] * taps[j][s]` and `dbias = sum_s dpre[s]` (fp32 atomics: every time
    tile of a channel block adds to the same W + 1 values per channel)."""
    offs_w = tl.arange(0, BLOCK_W)  # [BLOCK_W]
    dw = tl.zeros([BLOCK_D, BLOCK_W], dtype=tl.float32)
    for j in tl.static_range(WIDTH):
        dw += tl.where(offs_w[None, :] == j, tl.sum(dpre * taps[j], axis=1)[:, None], 0.0)
    tl.atomic_add(
        dw_ptr + offs_d.to(tl.int64)[:, None] * WIDTH + offs_w[None, :],
        dw,
        mask=mask_d[:, None] & (offs_w < WIDTH)[None, :],
        sem="relaxed",
    )
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + offs_d, tl.sum(dpre, axis=1), mask=mask_d, sem="relaxed")


@triton.jit
def _dfinal_part(dfinal_ptr, t, pid_b, dim, offs_d64, mask_d, seqlen, WIDTH: tl.constexpr):
    """d final_state's share of dx at positions `t` `[BLOCK_L]` (the last W-1 steps), fp32 `[BLOCK_D, BLOCK_L]`."""
    j = t - (seqlen - (WIDTH - 1))  # index into the final state
    mask_f = mask_d[:, None] & ((j >= 0) & (t < seqlen))[None, :]
    dfin_rows = dfinal_ptr + (pid_b * dim + offs_d64[:, None]) * (WIDTH - 1)
    return tl.load(dfin_rows + j[None, :], mask=mask_f, other=0.0).to(tl.float32)


@triton.jit
def _dx_from_lanes(dpre_lanes, next_lanes, w_ptr, offs_d, stride_w_d, mask_d, WIDTH: tl.constexpr,
                   VEC: tl.constexpr, LOG2_VEC: tl.constexpr):  # fmt: skip
    """`dx[t] = sum_k w[k] * dpre[t + (W-1-k)]` fp32 `[BLOCK_D, BLOCK_L]`, from the lanes of dpre at the tile's
    positions and at the vector after (`_lanes`; only its first W-1 lanes are read)."""
    dx = _weight(w_ptr, offs_d, stride_w_d, mask_d, WIDTH - 1)[:, None] * _from_lanes(dpre_lanes, VEC, LOG2_VEC)
    for k in tl.static_range(WIDTH - 1):
        tap = _from_lanes(_shifted_lanes(dpre_lanes, next_lanes, k - (WIDTH - 1), VEC), VEC, LOG2_VEC)
        dx += _weight(w_ptr, offs_d, stride_w_d, mask_d, k)[:, None] * tap
    return dx


@triton.jit
def _causal_conv1d_fwd_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    init_ptr,
    out_ptr,
    dim,
    seqlen,
    stride_x_b,
    stride_x_d,
    stride_x_l,
    stride_w_d,
    stride_init_b,
    stride_init_d,
    stride_out_b,
    stride_out_d,
    stride_out_l,
    WIDTH: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_INITIAL_STATE: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr,
    VEC: tl.constexpr,
    LOG2_VEC: tl.constexpr,
):
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    t = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)  # [BLOCK_L]
    mask_d = offs_d < dim
    offs_d64 = offs_d.to(tl.int64)
    x_rows = x_ptr + pid_b * stride_x_b + offs_d64[:, None] * stride_x_d  # [BLOCK_D, 1]
    init_rows = init_ptr + pid_b * stride_init_b + offs_d64[:, None] * stride_init_d if HAS_INITIAL_STATE else init_ptr

    taps = _taps(x_rows, stride_x_l, init_rows, t, seqlen, mask_d, WIDTH, HAS_INITIAL_STATE, VEC, LOG2_VEC)
    acc = _pre_activation(taps, w_ptr, bias_ptr, offs_d, stride_w_d, mask_d, WIDTH, HAS_BIAS)  # [BLOCK_D, BLOCK_L]
    if SILU:
        acc = acc * tl.sigmoid(acc)
    out_ptrs = (
        out_ptr + pid_b * stride_out_b + offs_d64[:, None] * stride_out_d + t.to(tl.int64)[None, :] * stride_out_l
    )
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_d[:, None] & (t < seqlen)[None, :])


@triton.jit
def _causal_conv1d_bwd_dpre_kernel(
    dout_ptr,
    x_ptr,
    w_ptr,
    bias_ptr,
    init_ptr,
    dpre_ptr,
    dw_ptr,
    dbias_ptr,
    dim,
    seqlen,
    stride_x_b,
    stride_x_d,
    stride_x_l,
    stride_w_d,
    stride_init_b,
    stride_init_d,
    stride_dout_b,
    stride_dout_d,
    stride_dout_l,
    stride_dpre_b,
    stride_dpre_d,
    stride_dpre_l,
    WIDTH: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_INITIAL_STATE: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_W: tl.constexpr,
    VEC: tl.constexpr,
    LOG2_VEC: tl.constexpr,
):
    # Backward pass 1, over output positions s: dpre[s] = dout[s] * silu'(pre[s]) (stored in dout's dtype when SILU),
    # and the weight and bias gradients dw[j] += sum_s dpre[s] * xp[s - (W-1) + j], dbias += sum_s dpre[s] (from the
    # fp32 values, before that store).
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    s = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)  # [BLOCK_L], output positions
    mask_d = offs_d < dim
    mask_s = mask_d[:, None] & (s < seqlen)[None, :]
    offs_d64 = offs_d.to(tl.int64)
    s64 = s.to(tl.int64)[None, :]
    x_rows = x_ptr + pid_b * stride_x_b + offs_d64[:, None] * stride_x_d  # [BLOCK_D, 1]
    init_rows = init_ptr + pid_b * stride_init_b + offs_d64[:, None] * stride_init_d if HAS_INITIAL_STATE else init_ptr
    dout_ptrs = dout_ptr + pid_b * stride_dout_b + offs_d64[:, None] * stride_dout_d + s64 * stride_dout_l
    dpre = tl.load(dout_ptrs, mask=mask_s, other=0.0).to(tl.float32)  # [BLOCK_D, BLOCK_L]
    # The W shifted taps xp[s - (W-1) + j] are built once and kept (a tuple of `[BLOCK_D, BLOCK_L]` tiles) for both
    # the pre-activation and dw. (Without lane shifts each is a load at a shift, element-wide because the shift breaks
    # the vector alignment; an earlier version loaded them twice: 96 two-byte loads a thread.)
    taps = _taps(x_rows, stride_x_l, init_rows, s, seqlen, mask_d, WIDTH, HAS_INITIAL_STATE, VEC, LOG2_VEC)
    if SILU:
        pre = _pre_activation(taps, w_ptr, bias_ptr, offs_d, stride_w_d, mask_d, WIDTH, HAS_BIAS)
        dpre = _silu_grad(dpre, pre)
        dpre_ptrs = dpre_ptr + pid_b * stride_dpre_b + offs_d64[:, None] * stride_dpre_d + s64 * stride_dpre_l
        tl.store(dpre_ptrs, dpre, mask=mask_s)
    _add_dw_dbias(dw_ptr, dbias_ptr, dpre, taps, offs_d, mask_d, WIDTH, HAS_BIAS, BLOCK_D, BLOCK_W)


@triton.jit
def _causal_conv1d_bwd_kernel(
    dout_ptr,
    x_ptr,
    w_ptr,
    bias_ptr,
    init_ptr,
    dfinal_ptr,
    dx_ptr,
    dw_ptr,
    dbias_ptr,
    dinit_ptr,
    dim,
    seqlen,
    stride_x_b,
    stride_x_d,
    stride_x_l,
    stride_w_d,
    stride_init_b,
    stride_init_d,
    stride_dout_b,
    stride_dout_d,
    stride_dout_l,
    stride_dx_b,
    stride_dx_d,
    stride_dx_l,
    WIDTH: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_INITIAL_STATE: tl.constexpr,
    HAS_DFINAL: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_W: tl.constexpr,
    VEC: tl.constexpr,
    LOG2_VEC: tl.constexpr,
):
    # The whole backward in one pass, for time-major memory (VEC > 0): dx at a tile's positions t needs dpre at
    # t .. t + W-1, i.e. the tile and the first W-1 lanes of the vector after it. Those lanes are recomputed here (their
    # pre-activation from the lanes of x, W-1 of VEC lanes: 3/8 more SiLU work at width 4, bf16) instead of dpre making
    # a round trip through memory between two passes (a write and a read of a bf16 sequence).
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    t = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)  # [BLOCK_L], aligned to VEC
    mask_d = offs_d < dim
    offs_d64 = offs_d.to(tl.int64)
    x_rows = x_ptr + pid_b * stride_x_b + offs_d64[:, None] * stride_x_d  # [BLOCK_D, 1]
    init_rows = init_ptr + pid_b * stride_init_b + offs_d64[:, None] * stride_init_d if HAS_INITIAL_STATE else init_ptr
    dout_rows = dout_ptr + pid_b * stride_dout_b + offs_d64[:, None] * stride_dout_d
    dout = _load_steps(dout_rows, stride_dout_l, t, seqlen, mask_d)  # [BLOCK_D, BLOCK_L] fp32, 0 past the end
    dout_next_lanes = _lanes(_load_steps(dout_rows, stride_dout_l, t + VEC, seqlen, mask_d), VEC, LOG2_VEC)
    taps = _taps(x_rows, stride_x_l, init_rows, t, seqlen, mask_d, WIDTH, HAS_INITIAL_STATE, VEC, LOG2_VEC)
    x_cur = taps[WIDTH - 1]  # x at the tile's own positions
    if SILU:
        dpre = _silu_grad(dout, _pre_activation(taps, w_ptr, bias_ptr, offs_d, stride_w_d, mask_d, WIDTH, HAS_BIAS))
        # dpre at the vector after the tile, its first W-1 lanes only: the taps of lane v are lanes of x there
        # (x[t + VEC], loaded aligned) or, reaching back, of x_cur.
        x_cur_lanes = _lanes(x_cur, VEC, LOG2_VEC)
        x_next_lanes = _lanes(
            _load_xp(x_rows, stride_x_l, init_rows, t + VEC, seqlen, mask_d, WIDTH, HAS_INITIAL_STATE), VEC, LOG2_VEC
        )
        next_lanes = ()
        for v in tl.static_range(VEC):
            if v < WIDTH - 1:
                lane_taps = ()
                for k in tl.static_range(WIDTH):
                    if v >= WIDTH - 1 - k:  # tap k of lane v: lane v - (W-1-k) of x there, or reaching back, of x_cur
                        lane = x_next_lanes[v - (WIDTH - 1 - k)]
                    else:
                        lane = x_cur_lanes[v - (WIDTH - 1 - k) + VEC]
                    lane_taps = lane_taps + (tl.reshape(lane, [BLOCK_D, BLOCK_L // VEC]),)
                pre_v = _pre_activation(lane_taps, w_ptr, bias_ptr, offs_d, stride_w_d, mask_d, WIDTH, HAS_BIAS)
                next_lanes = next_lanes + (
                    _silu_grad(dout_next_lanes[v], tl.reshape(pre_v, [BLOCK_D, BLOCK_L // VEC, 1])),
                )
            else:
                next_lanes = next_lanes + (tl.zeros_like(dout_next_lanes[v]),)  # never read
    else:
        dpre = dout
        next_lanes = dout_next_lanes
    dpre_lanes = _lanes(dpre, VEC, LOG2_VEC)
    dx = _dx_from_lanes(dpre_lanes, next_lanes, w_ptr, offs_d, stride_w_d, mask_d, WIDTH, VEC, LOG2_VEC)
    if HAS_DFINAL:
        dx += _dfinal_part(dfinal_ptr, t, pid_b, dim, offs_d64, mask_d, seqlen, WIDTH)
    dx_rows = dx_ptr + pid_b * stride_dx_b + offs_d64[:, None] * stride_dx_d
    tl.store(dx_rows + t.to(tl.int64)[None, :] * stride_dx_l, dx.to(dx_ptr.dtype.element_ty),
             mask=mask_d[:, None] & (t < seqlen)[None, :])  # fmt: skip
    _add_dw_dbias(dw_ptr, dbias_ptr, dpre, taps, offs_d, mask_d, WIDTH, HAS_BIAS, BLOCK_D, BLOCK_W)
    if HAS_INITIAL_STATE:  # noqa: SIM102 - a constexpr, resolved at compile time; `and` with a tensor is not
        if pid_l == 0:
            # d initial_state: dx at the W-1 steps before 0, i.e. the last lanes of the vector before this tile. Seen
            # from that vector, this tile's dpre is the vector after; its own dpre (positions < 0) is 0.
            p = t - VEC  # [BLOCK_L]
            zero_lanes = _lanes(tl.zeros_like(dpre), VEC, LOG2_VEC)
            dinit = tl.zeros_like(dpre)
            for k in tl.static_range(WIDTH - 1):
                tap = _from_lanes(_shifted_lanes(zero_lanes, dpre_lanes, k - (WIDTH - 1), VEC), VEC, LOG2_VEC)
                dinit += _weight(w_ptr, offs_d, stride_w_d, mask_d, k)[:, None] * tap
            if HAS_DFINAL:  # a sequence shorter than W-1: the final state reaches into the initial state
                dinit += _dfinal_part(dfinal_ptr, p, pid_b, dim, offs_d64, mask_d, seqlen, WIDTH)
            dinit_rows = dinit_ptr + (pid_b * dim + offs_d64[:, None]) * (WIDTH - 1) + (WIDTH - 1)
            tl.store(dinit_rows + p[None, :], dinit, mask=mask_d[:, None] & ((p < 0) & (p >= -(WIDTH - 1)))[None, :])


@triton.jit
def _causal_conv1d_bwd_dx_kernel(
    dpre_ptr,
    dfinal_ptr,
    w_ptr,
    dx_ptr,
    dinit_ptr,
    dim,
    seqlen,
    stride_w_d,
    stride_dpre_b,
    stride_dpre_d,
    stride_dpre_l,
    stride_dx_b,
    stride_dx_d,
    stride_dx_l,
    WIDTH: tl.constexpr,
    HAS_INITIAL_STATE: tl.constexpr,
    HAS_DFINAL: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_L: tl.constexpr,
    VEC: tl.constexpr,
    LOG2_VEC: tl.constexpr,
):
    # Backward pass 2, over input positions t: dx[t] = sum_k w[k] * dpre[t + (W-1-k)], plus d final_state where t is
    # one of the last W-1 steps. The tiles of x's own steps start at multiples of BLOCK_L, so the dx stores and the
    # unshifted dpre tap are aligned vector accesses (tiles that started W-1 steps early, to cover the initial state
    # too, made every dx store a 2-byte one). With an initial state, one extra program (the last) takes its W-1 steps.
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    mask_d = offs_d < dim
    offs_d64 = offs_d.to(tl.int64)
    n_tiles = tl.cdiv(seqlen, BLOCK_L)
    if pid_l < n_tiles:
        t = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)  # [BLOCK_L], positions of x
        dx = _dx_tile(dpre_ptr, dfinal_ptr, w_ptr, t, pid_b, offs_d64, mask_d, dim, seqlen, stride_w_d, stride_dpre_b,
                      stride_dpre_d, stride_dpre_l, WIDTH, HAS_DFINAL, BLOCK_D, BLOCK_L, VEC, LOG2_VEC)  # fmt: skip
        dx_rows = dx_ptr + pid_b * stride_dx_b + offs_d64[:, None] * stride_dx_d
        tl.store(dx_rows + t.to(tl.int64)[None, :] * stride_dx_l, dx.to(dx_ptr.dtype.element_ty),
                 mask=mask_d[:, None] & (t < seqlen)[None, :])  # fmt: skip
    if HAS_INITIAL_STATE:  # noqa: SIM102 - a constexpr, resolved at compile time; `and` with a tensor is not
        if pid_l == n_tiles:
            t = tl.arange(0, BLOCK_L) - (WIDTH - 1)  # [BLOCK_L], the initial state's steps are t < 0
            dx = _dx_tile(dpre_ptr, dfinal_ptr, w_ptr, t, pid_b, offs_d64, mask_d, dim, seqlen, stride_w_d,
                          stride_dpre_b, stride_dpre_d, stride_dpre_l, WIDTH, HAS_DFINAL, BLOCK_D, BLOCK_L, VEC, LOG2_VEC)  # fmt: skip
            dinit_rows = dinit_ptr + (pid_b * dim + offs_d64[:, None]) * (WIDTH - 1) + (WIDTH - 1)
            tl.store(dinit_rows + t[None, :], dx, mask=mask_d[:, None] & (t < 0)[None, :])


@triton.jit
def _load_steps(rows, stride_l, s, seqlen, mask_d):
    """A sequence (dout, dpre) at positions `s` `[BLOCK_L]` of `rows` `[BLOCK_D, 1]` as fp32 `[BLOCK_D, BLOCK_L]`, 0
    outside `[0, seqlen)`."""
    mask_s = mask_d[:, None] & ((s >= 0) & (s < seqlen))[None, :]
    return tl.load(rows + s.to(tl.int64)[None, :] * stride_l, mask=mask_s, other=0.0).to(tl.float32)


@triton.jit
def _dx_tile(
    dpre_ptr, dfinal_ptr, w_ptr, t, pid_b, offs_d64, mask_d, dim, seqlen, stride_w_d, stride_dpre_b, stride_dpre_d,
    stride_dpre_l, WIDTH: tl.constexpr, HAS_DFINAL: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    VEC: tl.constexpr, LOG2_VEC: tl.constexpr,
):  # fmt: skip
    """dx at positions `t` `[BLOCK_L]` (may be < 0: the initial state's steps) of `BLOCK_D` channels, fp32."""
    dpre_rows = dpre_ptr + pid_b * stride_dpre_b + offs_d64[:, None] * stride_dpre_d
    dx = tl.zeros([BLOCK_D, BLOCK_L], dtype=tl.float32)
    if VEC > 0:  # dpre[t] and dpre[t + VEC], aligned vector loads; the taps in between are built from their lanes
        cur = _load_steps(dpre_rows, stride_dpre_l, t, seqlen, mask_d)
        nxt = _load_steps(dpre_rows, stride_dpre_l, t + VEC, seqlen, mask_d)
    for k in tl.static_range(WIDTH):
        if VEC > 0:
            dpre = cur if k == WIDTH - 1 else _shifted(cur, nxt, k - (WIDTH - 1), VEC, LOG2_VEC)
        else:
            dpre = _load_steps(dpre_rows, stride_dpre_l, t + (WIDTH - 1 - k), seqlen, mask_d)
        dx += _weight(w_ptr, offs_d64, stride_w_d, mask_d, k)[:, None] * dpre
    if HAS_DFINAL:
        dx += _dfinal_part(dfinal_ptr, t, pid_b, dim, offs_d64, mask_d, seqlen, WIDTH)
    return dx


def _final_state(x: torch.Tensor, initial_state: torch.Tensor | None, width: int) -> torch.Tensor:
    """The last `width - 1` inputs (initial state included when the sequence is shorter), a new tensor."""
    batch, dim, seqlen = x.shape
    if seqlen >= width - 1:
        return x[:, :, seqlen - (width - 1) :].clone(memory_format=torch.contiguous_format)
    hist = initial_state if initial_state is not None else x.new_zeros(batch, dim, width - 1)
    return torch.cat([hist, x], dim=-1)[:, :, -(width - 1) :].contiguous()


def _causal_conv1d_fwd(x, weight, bias, initial_state, silu, return_final_state):
    """Launch the forward. Returns out `(b, d, l)` x.dtype (channel-last when x is) and the final state
    `(b, d, width-1)` contiguous (empty unless `return_final_state`)."""
    (x,) = sequence_strides(x)
    weight, bias, initial_state = unit_stride(weight, bias, initial_state)
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    if initial_state is not None:
        initial_state = initial_state.to(x.dtype)  # the reference keeps its history in x's dtype
    out = empty_sequence(x)
    cfg = _config("fwd", x)
    if seqlen > 0:
        init_strides = (initial_state.stride(0), initial_state.stride(1)) if initial_state is not None else (0, 0)
        grid = (triton.cdiv(seqlen, cfg["BLOCK_L"]), triton.cdiv(dim, cfg["BLOCK_D"]), batch)
        _causal_conv1d_fwd_kernel[grid](
            x,
            weight,
            bias,
            initial_state,
            out,
            dim,
            seqlen,
            *x.stride(),
            weight.stride(0),
            *init_strides,
            *out.stride(),
            WIDTH=width,
            HAS_BIAS=bias is not None,
            HAS_INITIAL_STATE=initial_state is not None,
            SILU=silu,
            **_lane_shifts(x, width, cfg),
            **cfg,
        )
    final = _final_state(x, initial_state, width) if return_final_state else x.new_empty(0)
    return out, final


def _causal_conv1d_bwd(dout, dfinal, x, weight, bias, initial_state, silu):
    """Launch the backward. Returns (dx, dweight, dbias, dinit), each like its input (dx channel-last when x is), or
    None where it is None."""
    dout, x = sequence_strides(dout, x)
    weight, bias = unit_stride(weight, bias)
    dfinal = None if dfinal is None else dfinal.contiguous()
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    init = initial_state.to(x.dtype) if initial_state is not None else None
    dx = empty_sequence(x)
    dw = torch.zeros(dim, width, device=x.device, dtype=torch.float32)
    dbias = torch.zeros(dim, device=x.device, dtype=torch.float32) if bias is not None else None
    dinit = empty(batch, dim, width - 1, device=x.device, dtype=torch.float32) if init is not None else None
    init_strides = (init.stride(0), init.stride(1)) if init is not None else (0, 0)
    one_pass = ONE_PASS_BACKWARD and seqlen > 0 and not (channel_last(x) or channel_last(dout))
    cfg = CONFIGS["bwd"]
    lanes = _lane_shifts(x, width, cfg) if one_pass else dict(VEC=0)
    if lanes["VEC"]:
        grid = (triton.cdiv(seqlen, cfg["BLOCK_L"]), triton.cdiv(dim, cfg["BLOCK_D"]), batch)
        _causal_conv1d_bwd_kernel[grid](
            dout,
            x,
            weight,
            bias,
            init,
            dfinal,
            dx,
            dw,
            dbias,
            dinit,
            dim,
            seqlen,
            *x.stride(),
            weight.stride(0),
            *init_strides,
            *dout.stride(),
            *dx.stride(),
            WIDTH=width,
            HAS_BIAS=bias is not None,
            HAS_INITIAL_STATE=init is not None,
            HAS_DFINAL=dfinal is not None,
            SILU=silu,
            BLOCK_W=triton.next_power_of_2(width),
            **lanes,
            **cfg,
        )
        return _backward_results(dx, dw, dbias, dinit, weight, bias, initial_state)
    cfg = _config("bwd_dpre", x)
    # Pass 1 stores dpre (in x's layout, in dout's dtype: bf16 in training halves the round trip between the passes;
    # dw/dbias are summed from the fp32 values before the store, so only dx sees the rounding) only with the SiLU;
    # without it dpre is dout itself.
    dpre = empty_sequence(x, dtype=dout.dtype) if silu else dout
    if seqlen > 0:
        grid = (triton.cdiv(seqlen, cfg["BLOCK_L"]), triton.cdiv(dim, cfg["BLOCK_D"]), batch)
        _causal_conv1d_bwd_dpre_kernel[grid](
            dout,
            x,
            weight,
            bias,
            init,
            dpre,
            dw,
            dbias,
            dim,
            seqlen,
            *x.stride(),
            weight.stride(0),
            *init_strides,
            *dout.stride(),
            *dpre.stride(),
            WIDTH=width,
            HAS_BIAS=bias is not None,
            HAS_INITIAL_STATE=init is not None,
            SILU=silu,
            BLOCK_W=triton.next_power_of_2(width),
            **_lane_shifts(x, width, cfg),
            **cfg,
        )
    cfg = _config("bwd_dx", x)
    if cfg["BLOCK_L"] < width - 1:
        raise ValueError(
            f"causal_conv1d: bwd_dx BLOCK_L {cfg['BLOCK_L']} must cover the initial state's {width - 1} steps"
        )
    # x's tiles, and with an initial state one more program for its steps (see the kernel).
    n_programs = triton.cdiv(seqlen, cfg["BLOCK_L"]) + (init is not None)
    grid = (max(n_programs, 1), triton.cdiv(dim, cfg["BLOCK_D"]), batch)  # an empty sequence: one idle program
    _causal_conv1d_bwd_dx_kernel[grid](
        dpre,
        dfinal,
        weight,
        dx,
        dinit,
        dim,
        seqlen,
        weight.stride(0),
        *dpre.stride(),
        *dx.stride(),
        WIDTH=width,
        HAS_INITIAL_STATE=init is not None,
        HAS_DFINAL=dfinal is not None,
        **_lane_shifts(dpre, width, cfg),
        **cfg,
    )
    return _backward_results(dx, dw, dbias, dinit, weight, bias, initial_state)


def _backward_results(dx, dw, dbias, dinit, weight, bias, initial_state):
    """(dx, dweight, dbias, dinit) in their inputs' dtypes (None where the input is None)."""
    return (
        dx,
        dw.to(weight.dtype),
        None if dbias is None else dbias.to(bias.dtype),
        None if dinit is None else dinit.to(initial_state.dtype),
    )


@torch.library.custom_op("mambalab::causal_conv1d_fwd", mutates_args=())
def _causal_conv1d_fwd_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    initial_state: torch.Tensor | None,
    silu: bool,
    return_final_state: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    return _causal_conv1d_fwd(x, weight, bias, initial_state, silu, return_final_state)


@_causal_conv1d_fwd_op.register_fake
def _(x, weight, bias, initial_state, silu, return_final_state):
    batch, dim, _ = x.shape
    final = x.new_empty(batch, dim, weight.shape[1] - 1) if return_final_state else x.new_empty(0)
    return empty_sequence(x, poison=False), final


@torch.library.custom_op("mambalab::causal_conv1d_bwd", mutates_args=())
def _causal_conv1d_bwd_op(
    dout: torch.Tensor,
    dfinal: torch.Tensor | None,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    initial_state: torch.Tensor | None,
    silu: bool,
) -> list[torch.Tensor]:
    grads = _causal_conv1d_bwd(dout, dfinal, x, weight, bias, initial_state, silu)
    return [g if g is not None else x.new_empty(0) for g in grads]


@_causal_conv1d_bwd_op.register_fake
def _(dout, dfinal, x, weight, bias, initial_state, silu):
    like = lambda t: x.new_empty(0) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)
    return [empty_sequence(x, poison=False), *(like(t) for t in (weight, bias, initial_state))]


class _CausalConv1dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, initial_state, silu, return_final_state):
        out, final = call_op(
            "causal_conv1d_fwd", _causal_conv1d_fwd, x, weight, bias, initial_state, silu, return_final_state
        )
        ctx.save_for_backward(x, weight, bias, initial_state)
        ctx.silu = silu
        ctx.return_final_state = return_final_state
        return out, final

    @staticmethod
    def backward(ctx, dout, dfinal):
        x, weight, bias, initial_state = ctx.saved_tensors
        dfinal = dfinal if ctx.return_final_state else None
        grads = call_op("causal_conv1d_bwd", _causal_conv1d_bwd, dout, dfinal, x, weight, bias, initial_state, ctx.silu)
        present = (x, weight, bias, initial_state)
        return (*(g if t is not None else None for g, t in zip(grads, present)), None, None)


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
):
    """Triton causal depthwise conv1d (+ SiLU); same contract as `kernels.causal_conv1d.ref.causal_conv1d`.

    x: `(batch, dim, seqlen)`, time-major (time stride 1) or channel-last (channel stride 1, e.g. `h.transpose(1, 2)`
    of a `[batch, seqlen, dim]` tensor); weight `(dim, width)`, 2 <= width; bias `(dim,)`; initial_state
    `(batch, dim, width - 1)`. Returns out `(batch, dim, seqlen)` in x's dtype and layout (dx too) and, with
    `return_final_state`, the final state `(batch, dim, width - 1)` contiguous in x's dtype.
    """
    silu = activation in ("silu", "swish")
    tensors = (x, weight, bias, initial_state)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        out, final = _CausalConv1dFn.apply(*tensors, silu, return_final_state)
    else:
        out, final = call_op("causal_conv1d_fwd", _causal_conv1d_fwd, *tensors, silu, return_final_state)
    return (out, final) if return_final_state else out
