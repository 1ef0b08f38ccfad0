"""Selective scan (Mamba S6) in Triton: a fused forward kernel, a reverse-scan backward kernel, and a sequence-parallel
(segmented) mode of both for long sequences with a small batch.

Math (the spec is `kernels/selective_scan/ref.py`), per batch b, channel d, state n, step t::

    dt[t]  = softplus(delta[t] + delta_bias)             (softplus only with delta_softplus)
    a[t]   = exp(dt[t] * A[d, n])                        (computed as exp2(dt * A * log2(e)))
    h[t]   = a[t] * h[t-1] + dt[t] * B[n, t] * u[t]      h[-1] = initial_state (or 0)
    y[t]   = sum_n C[n, t] * h[t, n] + D[d] * u[t]
    out[t] = y[t] * silu(z[t])

Forward. One program owns `BLOCK_D` channels of one sequence and keeps their state `[DSTATE, BLOCK_D]` in fp32
registers. It walks time in chunks of `BLOCK_L` steps: it loads u/delta/z as `[BLOCK_L, BLOCK_D]` tiles and B/C as
`[BLOCK_L, DSTATE]` tiles (once for all its channels), and solves the chunk's linear recurrence with
`tl.associative_scan` over the pairs `(a, dt*B*u)` with `(a1, b1) . (a2, b2) = (a1*a2, a2*b1 + b2)`; the state at the
chunk's start enters as `h[t] = scan_b[t] + scan_a[t] * h_start`. Tiles are time-major, `[BLOCK_L, DSTATE, BLOCK_D]`,
so the threads spread over (state, channel) pairs and each holds all steps of its pairs: the scan is a loop inside a
thread (measured 2-3x faster than spreading time over lanes). When gradients are needed, the state at the start of
every chunk is saved (fp32, `(batch, dim, n_chunks, dstate)`): that is all the backward needs.

Backward. With `g[t] = dL/dh[t]` and `q[t] = a[t] g[t]` (what step t hands back to step t-1) the adjoint obeys::

    g[t] = C[n, t] * dy[t] + q[t+1]          q[L] = dL/d(last_state)          d initial_state = q[0]

Each program walks its own chunks (BLOCK_L steps; SAVE_EVERY of them between two saved states, v10) from the last to
the first. For a chunk it finds the start state (the saved one, walked forward over the chunks between it and this
one), loads the sequences and B/C as whole tiles, walks forward one step at a time keeping every h[t], then walks
backward one step at a time carrying q (no decay is ever shifted to a neighbouring step), and forms, with
`a[t] * h[t-1] = h[t] - dt*B*u` (no shifted read of h)::

    du[t]     = dt * sum_n g B + D dy                  ddt[t] = sum_n g A (h - dt B u) + u sum_n g B
    dA[d, n] += sum_t g dt (h - dt B u)                dB[n, t] += sum_d g dt u      dC[n, t] += sum_d dy h
    dD       += sum_t dy u                             ddelta    = ddt * sigmoid(delta + delta_bias)  (softplus)

Every tile is 3-D `[BLOCK_L, BLOCK_D, BLOCK_N]`: time inside each thread (so picking a step is a register move),
channels then states over the lanes, the remaining states inside each thread; sequences and B/C are loaded through
pointers repeated over the axis they lack, so the loads land in that layout (kernels/NOTES.md, v8 and v9). The step-wise
walks (v9) replaced chunk-wide associative scans (v8): the same function in about half the instructions per element,
since no scan combines products of decays, nothing is shifted, and the chunk's forward walk needs no second exp2 of
a shifted decay.

Long sequences: segments. The grid above has only `batch * dim / BLOCK_D` programs, each walking the whole sequence:
at (1, 1536, 65536) that is 96 one-warp programs for 132 SMs. When the grid would leave the GPU underfilled, time is
also cut into segments of `S` steps (a multiple of the direction's BLOCK_L, so chunk indices stay global) and each
kernel gets a third grid axis over segments. Both directions are linear recurrences whose value across a segment is an
affine map `x -> total_decay * x + (what the segment adds from zero)`, with
`total_decay[k] = exp(A * sum_{t in k} dt[t])`, so:

    forward   pass 1  every segment but the last scans from h = 0 and writes its end state e[k] and sum of dt
              carry   h_start[0] = initial_state (or 0); h_start[k] = total_decay[k-1] * h_start[k-1] + e[k-1]
              pass 2  the forward above, each segment started from h_start[k]; the last one writes last_state
    backward  pass 1  every segment but the first runs the adjoint alone (no h needed: g depends only on a, C, dy)
                      from q = 0 after its end and writes what it sends before its start, q[s_k] = a[s_k] g[s_k], and
                      its sum of dt
              carry   G[K-1] = d last_state (or 0); G[k-1] = a[s_k] g_own[s_k] + total_decay[k] * G[k], where G[k] =
                      dL/dh[e_k] from the steps after segment k
              pass 2  the backward above, each segment started from q = G[k]; segment 0 writes d initial_state

A segment's steps use only their own decays: what the next segment's first step s_{k+1} contributes, a[s_{k+1}]
included, arrives through q[s_{k+1}], which pass 1 and the carry deliver. The saved chunk-start states stay global
(pass 2 writes them), so the forward's and the backward's segmentations are independent (each picks its own S for
its own BLOCK_D). The extra cost is the pass 1 walk (~1 exp2 per element again in the forward, a light adjoint-only
scan in the backward) for tens of times more programs.

Layouts. The sequences (u, delta, z, out, B, C and their gradients) are addressed through a stride per axis, time
included: time-major memory and channel-last memory (a transposed `[batch, seqlen, channels]`, as the mixer's Linear
layers give it) both go through without a copy, and out/du/ddelta/dz/dB/dC take their input's layout. The channels
are the tiles' fastest axis, so channel-last loads are the coalesced ones.

dB/dC (shared by the channels of a group) are summed over each program's channels in registers (for the dstate-16
blocks by a reduce-scatter across the channel lanes, `DBC_SCATTER`, session 16: the backward 11% faster at the 370M
shape than a full sum per step), then across programs
either from per-program fp32 slices (`DBC_REDUCTION = "partials"`, summed by PyTorch) or by fp32 atomics; dA, dD and
d delta_bias (shared by the batch) are accumulated per program and added with one atomic each.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels._triton_utils import call_op, empty, empty_sequence, sequence_strides, unit_stride

__all__ = ["selective_scan"]

_LOG2E = 1.4426950408889634

# Block shapes, chosen per dstate on an H100 (see kernels/NOTES.md, v8 to v10). The forward's BLOCK_L is also the
# interval at which it saves states for the backward, whose chunks tile it: BLOCK_L x SAVE_EVERY backward steps per
# saved state (see _check_chunks). dstate 16 (v10): 4-step chunks of 8 channels, capped at 168 registers so 12
# one-warp programs fit on an SM (a batch-8 grid in one wave); at (8, 1536, 2048) the backward took 1391 us against
# 1771 for 8-step chunks of 4 channels (1890 with the same blocks uncapped: 219 registers, 9 programs per SM).
CONFIGS: dict[str, dict[int, dict[str, int]]] = {
    "fwd": {16: dict(BLOCK_D=8, BLOCK_L=8, num_warps=1), 64: dict(BLOCK_D=4, BLOCK_L=8, num_warps=1)},
    "bwd": {
        16: dict(BLOCK_D=8, BLOCK_L=4, SAVE_EVERY=2, num_warps=1, maxnreg=168),
        64: dict(BLOCK_D=2, BLOCK_L=8, SAVE_EVERY=1, num_warps=1),
    },
}
# dB/dC are sums over channels: fp32 atomics into one buffer ("atomics"), or per-program partial slices summed by
# PyTorch afterwards ("partials", which fall back to atomics above PARTIALS_MAX_BYTES of scratch). Both timed the same
# on an H100 (3.35 vs 3.50 ms fwd+bwd at (8, 1536, 2048, 16)); atomics need no scratch.
DBC_REDUCTION = "atomics"
# Within a program, the sums of dB/dC over its channels: a reduce-scatter (each channel ends with one step's dB or
# dC; needs BLOCK_D == 2 * BLOCK_L, the dstate-16 blocks) instead of a full sum over the channel lanes per step.
DBC_SCATTER = True
PARTIALS_MAX_BYTES = 2 << 30
# Programs per SM below which the grid counts as underfilled, per direction: a long enough sequence is then cut into
# segments (see the module docstring), else the channel block shrinks (down to 2) to make more programs. Forward 8: an
# SM holds 8-12 of its one-warp programs at once. Backward 4 (v9, H100): at (2, 2048, 16384) its 1024 4-channel
# programs on one segment took 4549 us against 4978 us for 8-channel blocks in 9 segments; at (1, 1536, 65536) the 384
# programs get 22 segments of 8-channel blocks (6940 us; 8683 with 4-channel blocks). With v10's 8-channel blocks
# (2, 2048, 16384) has 512 programs, just under 4 per SM, and runs in segments: 5950 us fwd+bwd against 6246 for v9.
MIN_PROGRAMS_PER_SM: dict[str, int] = {"fwd": 8, "bwd": 4}
# A config with a register cap (maxnreg) gets a lower one where that fits the whole grid on the GPU in one wave and
# the grid does not fit at the configured cap: the largest cap (a multiple of 8) that does, down to MIN_REGISTER_CAP.
# Below it spills cost more than the second wave (see `_register_cap`).
MIN_REGISTER_CAP = 128
# Offsets at or past this use 64-bit arithmetic in the backward (see _wide_offsets); tests lower it to reach that path.
INT32_OFFSET_LIMIT = 2**31
# Segmented (sequence-parallel) scan: segments are at least SEGMENT_MIN_LEN steps, and as many as give about
# SEGMENT_PROGRAMS_PER_SM programs per SM. The pass-2 kernels hold ~240 registers per thread, so only ~8 one-warp
# programs fit on an SM at once; on an H100 the time was flat for 2-6 waves of those (segments of 1024-3000 steps at
# (1, 1536, 65536) and (2, 2048, 16384)) and 10-40% worse with under 2 (kernels/NOTES.md, v6). SEGMENT_LEN forces a
# length in steps (a multiple of BLOCK_L) per direction, on any device (tests use it to get several segments on CPU);
# a length >= seqlen forces the single-segment path.
SEGMENT_MIN_LEN = 1024
SEGMENT_PROGRAMS_PER_SM = 32
# ...and only where at least MIN_SEGMENTS such segments fit: at (1, 1536, 2048) two segments timed 1046 us of GPU time
# for fwd+bwd against 974 us for the smaller channel blocks of the single-segment grid (and ~0.6 ms more host time per
# call for the extra launches); at 4096 steps four segments took 1199 us against 1962 (H100, kernels/NOTES.md).
MIN_SEGMENTS = 4
SEGMENT_LEN: dict[str, int | None] = {"fwd": None, "bwd": None}
# Channel blocks of segmented grids, per dstate like CONFIGS: there the segments, not the channels, fill the GPU, so
# the block that is cheapest per element wins even where it would leave a single-segment grid short of programs.
SEGMENT_BLOCK_D: dict[str, dict[int, int]] = {"fwd": {16: 16, 64: 4}, "bwd": {16: 8, 64: 2}}


def _by_dstate(table: dict[int, object], dstate: int):
    """The entry for the smallest dstate key >= dstate (else the largest key)."""
    return table[min((k for k in table if k >= dstate), default=max(table))]


def _config(kind: str, dstate: int) -> dict[str, int]:
    return dict(_by_dstate(CONFIGS[kind], dstate))


@triton.jit
def _scan_combine(a1, b1, a2, b2):
    # (a1, b1) comes first in scan order: h = a2 * (a1 * h0 + b1) + b2.
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _pick_last(a, b):
    # With tl.reduce over an axis held inside each thread (the time axis here), this folds in order: the last element.
    return b


@triton.jit
def _pick_first(a, b):
    return a


@triton.jit
def _softplus(x):
    # torch.nn.functional.softplus with its default threshold of 20, on the hardware exp2/log2 (MUFU ops):
    # log(1 + e^x) = log2(1 + 2^(x log2 e)) ln 2. tl.exp/tl.log compiled to ~3x the instructions.
    return tl.where(x <= 20.0, tl.log2(1.0 + tl.exp2(tl.minimum(x, 20.0) * 1.4426950408889634)) * 0.6931471805599453, x)


@triton.jit
def _sigmoid(x):
    # tl.sigmoid divides with IEEE rounding (a dozen instructions and a slow path); the approximate division is one
    # reciprocal and a multiply, well inside the bf16/fp32 tolerances of the gradients it feeds.
    return tl.fdiv(1.0, 1.0 + tl.exp2(-x * 1.4426950408889634), ieee_rounding=False)


@triton.jit
def _selective_scan_fwd_kernel(
    u_ptr,
    delta_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    delta_bias_ptr,
    start_ptr,
    out_ptr,
    end_ptr,
    dtsum_ptr,
    states_ptr,
    dim,
    dstate,
    seqlen,
    n_chunks,
    seg_chunks,
    seg_offset,
    n_segments,
    channels_per_group,
    stride_u_b,
    stride_u_d,
    stride_u_l,
    stride_delta_b,
    stride_delta_d,
    stride_delta_l,
    stride_z_b,
    stride_z_d,
    stride_z_l,
    stride_A_d,
    stride_B_b,
    stride_B_g,
    stride_B_n,
    stride_B_l,
    stride_C_b,
    stride_C_g,
    stride_C_n,
    stride_C_l,
    stride_start_b,
    stride_start_d,
    stride_start_s,
    stride_end_b,
    stride_end_d,
    stride_end_s,
    stride_out_b,
    stride_out_d,
    stride_out_l,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_DELTA_BIAS: tl.constexpr,
    HAS_START: tl.constexpr,
    DELTA_SOFTPLUS: tl.constexpr,
    SAVE_STATES: tl.constexpr,
    SEGMENT_ENDS: tl.constexpr,
    TIME_IN_THREAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    # Program (channel block, batch, segment): chunks [seg * seg_chunks, (seg + 1) * seg_chunks) of the sequence, from
    # the state at start_ptr (this segment's start: the initial state, or the carried one; zero without HAS_START).
    #   SEGMENT_ENDS=False (the forward proper): writes out, the chunk-start states (SAVE_STATES) and, from the last
    #     segment only, the final state to end_ptr.
    #   SEGMENT_ENDS=True (pass 1 of the segmented forward): no output and no C/z/D; writes the segment's end state to
    #     end_ptr (batch, dim, segments, dstate) and its sum of dt to dtsum_ptr (batch, dim, segments).
    # start/end are fp32 `(batch, dim, [segments,] dstate)` with unit stride on dstate; a segment stride of 0 reads or
    # writes one (batch, dim, dstate) tensor.
    #
    # Tiles are time-major, [BLOCK_L, BLOCK_N, BLOCK_D]: the channels are the fastest axis, so threads spread over
    # channels and states and each thread holds all BLOCK_L steps of its (state, channel) pairs; the scan over time
    # is then a loop inside each thread, with no exchange between threads. Every sequence is read and written through
    # its own (batch, channel, time) strides: time-major or channel-last memory (stride 1 on time or on channels;
    # Triton specialises a stride of 1, so either layout gets unit-stride address arithmetic).
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    seg = tl.program_id(2) + seg_offset
    chunk_lo = seg * seg_chunks
    chunk_hi = tl.minimum(chunk_lo + seg_chunks, n_chunks)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    offs_n = tl.arange(0, BLOCK_N)  # [BLOCK_N]
    offs_l = tl.arange(0, BLOCK_L)  # [BLOCK_L]
    mask_d = offs_d < dim
    mask_n = offs_n < dstate
    mask_nd = mask_n[:, None] & mask_d[None, :]  # [BLOCK_N, BLOCK_D]
    offs_d64 = offs_d.to(tl.int64)
    group = (pid_d * BLOCK_D) // channels_per_group  # every channel of a program is in one group

    A2 = tl.load(A_ptr + offs_d64[None, :] * stride_A_d + offs_n[:, None], mask=mask_nd, other=0.0).to(tl.float32)
    A2 = A2 * 1.4426950408889634  # [BLOCK_N, BLOCK_D], A * log2(e)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_DELTA_BIAS:
        bias = tl.load(delta_bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)

    u_cols = u_ptr + pid_b * stride_u_b + offs_d64[None, :] * stride_u_d  # [1, BLOCK_D]
    delta_cols = delta_ptr + pid_b * stride_delta_b + offs_d64[None, :] * stride_delta_d
    out_cols = out_ptr + pid_b * stride_out_b + offs_d64[None, :] * stride_out_d
    if HAS_Z:
        z_cols = z_ptr + pid_b * stride_z_b + offs_d64[None, :] * stride_z_d
    B_cols = B_ptr + pid_b * stride_B_b + group * stride_B_g + offs_n[None, :] * stride_B_n  # [1, BLOCK_N]
    C_cols = C_ptr + pid_b * stride_C_b + group * stride_C_g + offs_n[None, :] * stride_C_n

    if HAS_START:
        start_ptrs = start_ptr + pid_b * stride_start_b + offs_d64[None, :] * stride_start_d + offs_n[:, None]
        h = tl.load(start_ptrs + seg * stride_start_s, mask=mask_nd, other=0.0).to(tl.float32)  # [BLOCK_N, BLOCK_D]
    else:
        h = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dt_sum = tl.zeros([BLOCK_D], dtype=tl.float32)

    for chunk in range(chunk_lo, chunk_hi):
        if SAVE_STATES:
            chunk_offs = ((pid_b * dim + offs_d64[None, :]) * n_chunks + chunk) * dstate + offs_n[:, None]
            tl.store(states_ptr + chunk_offs, h, mask=mask_nd)
        t = chunk * BLOCK_L + offs_l  # [BLOCK_L]
        t64 = t.to(tl.int64)[:, None]  # [BLOCK_L, 1]; time offsets are strided (channel-last) and may pass 2^31
        mask_t = t < seqlen
        mask_td = mask_t[:, None] & mask_d[None, :]  # [BLOCK_L, BLOCK_D]
        mask_tn = mask_t[:, None] & mask_n[None, :]  # [BLOCK_L, BLOCK_N]
        u = tl.load(u_cols + t64 * stride_u_l, mask=mask_td, other=0.0).to(tl.float32)  # [BLOCK_L, BLOCK_D]
        dt = tl.load(delta_cols + t64 * stride_delta_l, mask=mask_td, other=0.0).to(tl.float32)
        if HAS_DELTA_BIAS:
            dt += bias[None, :]
        if DELTA_SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(mask_td, dt, 0.0)  # padding steps: decay 1, input 0
        Bt = tl.load(B_cols + t64 * stride_B_l, mask=mask_tn, other=0.0).to(tl.float32)  # [BLOCK_L, BLOCK_N]

        decay = tl.exp2(dt[:, None, :] * A2[None, :, :])  # [BLOCK_L, BLOCK_N, BLOCK_D]
        inp = (dt * u)[:, None, :] * Bt[:, :, None]  # [BLOCK_L, BLOCK_N, BLOCK_D]
        if SEGMENT_ENDS:
            # Only the state after the chunk: fold the chunk's (decay, input) pairs in time order (no prefixes).
            dt_sum += tl.sum(dt, axis=0)
            if TIME_IN_THREAD:
                chunk_decay, chunk_inp = tl.reduce((decay, inp), 0, _scan_combine)  # [BLOCK_N, BLOCK_D]
                h = chunk_inp + chunk_decay * h
            else:
                run_decay, run_inp = tl.associative_scan((decay, inp), axis=0, combine_fn=_scan_combine)
                hs = run_inp + run_decay * h[None, :, :]
                h = tl.sum(tl.where(offs_l[:, None, None] == BLOCK_L - 1, hs, 0.0), axis=0)
        else:
            Ct = tl.load(C_cols + t64 * stride_C_l, mask=mask_tn, other=0.0).to(tl.float32)
            run_decay, run_inp = tl.associative_scan((decay, inp), axis=0, combine_fn=_scan_combine)
            hs = run_inp + run_decay * h[None, :, :]  # [BLOCK_L, BLOCK_N, BLOCK_D]
            y = tl.sum(hs * Ct[:, :, None], axis=1)  # [BLOCK_L, BLOCK_D]
            if TIME_IN_THREAD:
                h = tl.reduce(hs, 0, _pick_last)  # [BLOCK_N, BLOCK_D], the state after the chunk's last step
            else:
                h = tl.sum(tl.where(offs_l[:, None, None] == BLOCK_L - 1, hs, 0.0), axis=0)

            if HAS_D:
                y += Dv[None, :] * u
            if HAS_Z:
                zt = tl.load(z_cols + t64 * stride_z_l, mask=mask_td, other=0.0).to(tl.float32)
                y *= zt * _sigmoid(zt)
            tl.store(out_cols + t64 * stride_out_l, y.to(out_ptr.dtype.element_ty), mask=mask_td)

    end_ptrs = end_ptr + pid_b * stride_end_b + offs_d64[None, :] * stride_end_d + offs_n[:, None]
    if SEGMENT_ENDS:
        tl.store(end_ptrs + seg * stride_end_s, h, mask=mask_nd)
        tl.store(dtsum_ptr + (pid_b * dim + offs_d64) * n_segments + seg, dt_sum, mask=mask_d)
    else:
        tl.store(end_ptrs + seg * stride_end_s, h, mask=mask_nd & (seg == n_segments - 1))


@triton.jit
def _segment_carry_kernel(
    x_ptr,
    dtsum_ptr,
    A_ptr,
    h0_ptr,
    batch_dim_state,
    dim,
    dstate,
    n_segments,
    stride_A_d,
    stride_h0_b,
    stride_h0_d,
    HAS_H0: tl.constexpr,
    REVERSE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # The sequential part of the segmented scan, in place over x `(batch, dim, segments, dstate)` fp32 (contiguous).
    # On entry x[k] holds what segment k adds from a zero state (all segments but the last one visited) and dtsum
    # `(batch, dim, segments)` its sum of dt; on exit x[k] holds the value entering segment k:
    #     h = h0 (or 0);  for k in visiting order: x[k], h = h, exp(A * dtsum[k]) * h + x[k]
    # Forward: k = 0, 1, ... (h0 = initial_state, x = end states from zero -> start states). Backward (REVERSE):
    # k = K-1, K-2, ... (h0 = d last_state, x = each segment's own d h before its start -> g after its end).
    # One element (b, d, n) per lane; K is small (tens), so this is a few microseconds.
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # flat (batch, dim, dstate) index
    mask = offs < batch_dim_state
    bd = offs // dstate
    n = offs % dstate
    d = bd % dim
    A2 = tl.load(A_ptr + d * stride_A_d + n, mask=mask, other=0.0).to(tl.float32) * 1.4426950408889634
    if HAS_H0:
        h = tl.load(h0_ptr + (bd // dim) * stride_h0_b + d * stride_h0_d + n, mask=mask, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(0, n_segments - 1):
        if REVERSE:
            k = n_segments - 1 - i
        else:
            k = i
        x_ptrs = x_ptr + (bd * n_segments + k) * dstate + n
        x = tl.load(x_ptrs, mask=mask, other=0.0)
        dts = tl.load(dtsum_ptr + bd * n_segments + k, mask=mask, other=0.0)
        tl.store(x_ptrs, h, mask=mask)
        h = tl.exp2(A2 * dts) * h + x
    if REVERSE:
        tl.store(x_ptr + bd * n_segments * dstate + n, h, mask=mask)
    else:
        tl.store(x_ptr + (bd * n_segments + n_segments - 1) * dstate + n, h, mask=mask)


@triton.jit
def _load_dt(ptrs, mask, bias, HAS_DELTA_BIAS: tl.constexpr, DELTA_SOFTPLUS: tl.constexpr):
    # A [BLOCK_L, BLOCK_D, 1] tile of dt = softplus(delta + delta_bias) (each part optional) through _seq_load's
    # repeated pointers, 0 where mask is off (padding steps: decay 1, input 0).
    dt = _seq_load(ptrs, mask)
    if HAS_DELTA_BIAS:
        dt += bias
    if DELTA_SOFTPLUS:
        dt = _softplus(dt)
    return tl.where(mask, dt, 0.0)


@triton.jit
def _seq_load(ptrs, mask):
    # ptrs [BLOCK_L, BLOCK_D, N_LANES] repeat one [BLOCK_L, BLOCK_D, 1] tile of a sequence over the last axis (a zero
    # offset), so the load gets the compute tiles' layout; folding that axis with _pick_first keeps each thread's own
    # copy (its shuffles have unused results and compile away). Returns the tile, fp32, [BLOCK_L, BLOCK_D, 1].
    x = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
    return tl.reduce(x, 2, _pick_first, keep_dims=True)


@triton.jit
def _seq_store(ptrs, value, mask):
    # The inverse of _seq_load: value [BLOCK_L, BLOCK_D, 1] through ptrs [BLOCK_L, BLOCK_D, N_LANES], written by the
    # first copy only.
    copy = tl.arange(0, ptrs.shape[2])[None, None, :]
    value = tl.broadcast_to(value, ptrs.shape).to(ptrs.dtype.element_ty)
    tl.store(ptrs, value, mask=mask & (copy == 0))


@triton.jit
def _bc_load(ptrs, mask, TO_FP32: tl.constexpr = True):
    # B/C tiles: ptrs [BLOCK_L, BLOCK_D, BLOCK_N] repeat [BLOCK_L, 1, BLOCK_N] over the channels. Returns
    # [BLOCK_L, 1, BLOCK_N], fp32 or (TO_FP32=False) in the input's dtype.
    x = tl.load(ptrs, mask=mask, other=0.0)
    if TO_FP32:
        x = x.to(tl.float32)
    return tl.reduce(x, 1, _pick_first, keep_dims=True)


@triton.jit
def _bc_accumulate(ptrs, value, mask, PARTIALS: tl.constexpr):
    # dB/dC: value [BLOCK_L, 1, BLOCK_N] (this program's sum over its channels) into fp32 ptrs [BLOCK_L, BLOCK_D,
    # BLOCK_N] that repeat one [BLOCK_L, BLOCK_N] tile over the channels; the first channel's copy writes.
    copy = tl.arange(0, ptrs.shape[1])[None, :, None]
    value = tl.broadcast_to(value, ptrs.shape)
    if PARTIALS:
        tl.store(ptrs, value, mask=mask & (copy == 0))
    else:
        tl.atomic_add(ptrs, value, mask=mask & (copy == 0), sem="relaxed")


@triton.jit
def _exchange_halves(first, second, bit: tl.constexpr):
    # One level of a reduce-scatter over the channel axis (axis 1) of two [1, BLOCK_D, BLOCK_N] tiles: channel c and
    # its partner c ^ 2^bit each keep one tile and send the other, so c gets `first` (bit clear) or `second` (bit
    # set) summed over the pair. With the channels on the lanes the partner's value is one shuffle away: a full sum
    # over the BLOCK_D lanes of both tiles would take log2(BLOCK_D) shuffles and adds each, the scatter halves the
    # tiles at every level (kernels/NOTES.md, session 16).
    channel = tl.arange(0, first.shape[1])[None, :, None]
    upper = ((channel >> bit) & 1) == 1  # [1, BLOCK_D, 1]
    keep = tl.where(upper, second, first)
    send = tl.where(upper, first, second)
    partner = tl.broadcast_to(channel ^ (1 << bit), send.shape)
    return keep + tl.gather(send, partner, 1)


@triton.jit(do_not_specialize=["stride_states_n"])
def _selective_scan_bwd_kernel(
    dout_ptr,
    dend_ptr,
    u_ptr,
    delta_ptr,
    A_ptr,
    B_ptr,
    C_ptr,
    D_ptr,
    z_ptr,
    delta_bias_ptr,
    states_ptr,
    du_ptr,
    ddelta_ptr,
    dA_ptr,
    dB_ptr,
    dC_ptr,
    dD_ptr,
    dz_ptr,
    ddelta_bias_ptr,
    dstart_ptr,
    dtsum_ptr,
    dim,
    dstate,
    seqlen,
    n_chunks,
    n_saved,
    seg_chunks,
    seg_offset,
    n_segments,
    channels_per_group,
    parts_per_group,
    stride_u_b,
    stride_u_d,
    stride_u_l,
    stride_delta_b,
    stride_delta_d,
    stride_delta_l,
    stride_z_b,
    stride_z_d,
    stride_z_l,
    stride_A_d,
    stride_B_b,
    stride_B_g,
    stride_B_n,
    stride_B_l,
    stride_C_b,
    stride_C_g,
    stride_C_n,
    stride_C_l,
    stride_dout_b,
    stride_dout_d,
    stride_dout_l,
    stride_du_b,
    stride_du_d,
    stride_du_l,
    stride_ddelta_b,
    stride_ddelta_d,
    stride_ddelta_l,
    stride_dz_b,
    stride_dz_d,
    stride_dz_l,
    stride_dB_p,
    stride_dB_b,
    stride_dB_g,
    stride_dB_n,
    stride_dB_l,
    stride_dC_p,
    stride_dC_b,
    stride_dC_g,
    stride_dC_n,
    stride_dC_l,
    stride_dend_b,
    stride_dend_d,
    stride_dend_s,
    stride_dstart_b,
    stride_dstart_d,
    stride_dstart_s,
    stride_states_n,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_DELTA_BIAS: tl.constexpr,
    HAS_DEND: tl.constexpr,
    HAS_DSTART: tl.constexpr,
    DELTA_SOFTPLUS: tl.constexpr,
    SEGMENT_ADJOINT: tl.constexpr,
    DBC_PARTIALS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_L: tl.constexpr,
    SAVE_EVERY: tl.constexpr,
    N_LANES: tl.constexpr,
    WIDE: tl.constexpr,
    SCATTER_DBC: tl.constexpr,
):
    # Program (channel block, batch, segment): steps [t_lo, t_hi) (chunks [seg * seg_chunks, ...)) in reverse, from
    # dL/dh[t_hi - 1] through the steps after the segment, read from dend_ptr (zero without HAS_DEND).
    #   SEGMENT_ADJOINT=False (the backward proper): all gradients; with HAS_DSTART, segment 0 writes
    #     d initial_state = a[0] g[0] to dstart_ptr.
    #   SEGMENT_ADJOINT=True (pass 1 of the segmented backward): the adjoint alone (no h, u, B or saved states);
    #     writes a[t_lo] g[t_lo] to dstart_ptr (batch, dim, segments, dstate) and the segment's sum of dt to dtsum_ptr.
    # dend/dstart are fp32 `(batch, dim, [segments,] dstate)` with unit stride on dstate (segment stride 0: one tensor).
    #
    # A chunk is BLOCK_L steps; the forward saved a state every SAVE_EVERY chunks (every forward chunk). A chunk that
    # does not start at a saved state first walks forward from the last saved one over the chunks in between (h only,
    # from their reloaded dt, u and B): shorter chunks hold fewer h[t] in registers. The chunk's sequences and B/C are
    # loaded as whole tiles, then it is walked one step at a time, twice: forward from its start state, keeping every
    # h[t] (`hs`), then backward, carrying q = a[t] g[t] (what step t hands to step t - 1: g[t-1] = C dy + q), so no
    # decay is ever shifted.
    # Steps are picked from, and results put into, the chunk tiles with masks over their time axis, which is held
    # inside each thread, so the picks compile to register moves.
    #
    # Every tensor is 3-D over [BLOCK_L, BLOCK_D, BLOCK_N] (time, channel, state), with size 1 on the axes it does not
    # have: a sequence is [BLOCK_L, BLOCK_D, 1], B/C [BLOCK_L, 1, BLOCK_N], a state [1, BLOCK_D, BLOCK_N]. Sequences
    # and B/C are loaded and stored through pointers repeated over the missing axis (_seq_load, _bc_load, ...), which
    # gives the memory operations the layout of the compute tiles: time inside each thread, the channels over the
    # lanes, then the states (N_LANES lanes), the rest of the states inside each thread. Sums over the states (y, gB,
    # ddt) are then mostly in-thread; sums over the channels (dB, dC) cross the lanes.
    # Every state-shaped fp32 tensor (A, the saved states, dend/dstart, dA) has unit stride on the states, but is
    # addressed through stride_states_n = 1, which is not specialised: a known unit stride would give those loads
    # several consecutive states per thread, a layout of their own (kernels/NOTES.md, v8).
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    seg = tl.program_id(2) + seg_offset
    chunk_lo = seg * seg_chunks
    chunk_hi = tl.minimum(chunk_lo + seg_chunks, n_chunks)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    if WIDE:
        offs_n = offs_n.to(tl.int64)
    d3 = offs_d.to(tl.int64)[None, :, None]  # [1, BLOCK_D, 1]
    n3 = offs_n[None, None, :]  # [1, 1, BLOCK_N]
    l3 = tl.arange(0, BLOCK_L)[:, None, None]  # [BLOCK_L, 1, 1]
    mask_d3 = (offs_d < dim)[None, :, None]
    mask_n3 = (offs_n < dstate)[None, None, :]
    mask_nd = mask_n3 & mask_d3  # [1, BLOCK_D, BLOCK_N]
    over_lanes = tl.zeros([1, 1, N_LANES], dtype=tl.int64)  # pointer offsets repeating a sequence tile
    over_channels = tl.zeros([1, BLOCK_D, 1], dtype=tl.int32)  # ... and a B/C tile
    group = (pid_d * BLOCK_D) // channels_per_group

    A = tl.load(A_ptr + d3 * stride_A_d + n3 * stride_states_n, mask=mask_nd, other=0.0)  # [1, BLOCK_D, BLOCK_N]
    A = A.to(tl.float32)
    A2 = A * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(D_ptr + d3, mask=mask_d3, other=0.0).to(tl.float32)  # [1, BLOCK_D, 1]
    if HAS_DELTA_BIAS:
        bias = tl.load(delta_bias_ptr + d3, mask=mask_d3, other=0.0).to(tl.float32)
    else:
        bias = 0.0

    u_cols = u_ptr + pid_b * stride_u_b + d3 * stride_u_d + over_lanes  # [1, BLOCK_D, N_LANES]
    delta_cols = delta_ptr + pid_b * stride_delta_b + d3 * stride_delta_d + over_lanes
    dout_cols = dout_ptr + pid_b * stride_dout_b + d3 * stride_dout_d + over_lanes
    du_cols = du_ptr + pid_b * stride_du_b + d3 * stride_du_d + over_lanes
    ddelta_cols = ddelta_ptr + pid_b * stride_ddelta_b + d3 * stride_ddelta_d + over_lanes
    if HAS_Z:
        z_cols = z_ptr + pid_b * stride_z_b + d3 * stride_z_d + over_lanes
        dz_cols = dz_ptr + pid_b * stride_dz_b + d3 * stride_dz_d + over_lanes
    # Per-state addresses are offsets [1, BLOCK_D, BLOCK_N] from a pointer per (batch, group) or channel: int32 (64-bit
    # pointer tiles held a register pair per state and thread) unless the launcher finds they may not fit (WIDE).
    B_row = B_ptr + pid_b * stride_B_b + group * stride_B_g
    C_row = C_ptr + pid_b * stride_C_b + group * stride_C_g
    B_n = n3 * stride_B_n + over_channels
    C_n = n3 * stride_C_n + over_channels
    # dB/dC are fp32 (parts_per_group, batch, groups, dstate, seqlen) with partials (this program's own slice, summed
    # afterwards), else (batch, groups, dstate, seqlen) with a part stride of 0.
    part = (pid_d % parts_per_group).to(tl.int64) if DBC_PARTIALS else 0
    dB_row = dB_ptr + part * stride_dB_p + pid_b * stride_dB_b + group * stride_dB_g
    dC_row = dC_ptr + part * stride_dC_p + pid_b * stride_dC_b + group * stride_dC_g
    dB_n = n3 * stride_dB_n + over_channels
    dC_n = n3 * stride_dC_n + over_channels
    states_row = states_ptr + (pid_b * dim + d3) * n_saved * dstate  # [1, BLOCK_D, 1]

    if HAS_DEND:
        dend_ptrs = dend_ptr + pid_b * stride_dend_b + d3 * stride_dend_d + n3 * stride_states_n
        q = tl.load(dend_ptrs + seg * stride_dend_s, mask=mask_nd, other=0.0).to(tl.float32)  # dL/dh[t_hi - 1]
    else:
        q = tl.zeros([1, BLOCK_D, BLOCK_N], dtype=tl.float32)
    if SCATTER_DBC:
        # dB/dC by reduce-scatter over the channels (see _exchange_halves): channel c of the block ends up with the
        # block's sum for step BLOCK_L - 1 - c // 2 of the chunk, of dB if c is even and of dC if odd.
        channel3 = tl.arange(0, BLOCK_D)[None, :, None]  # [1, BLOCK_D, 1], the channel within the block
        own_j = BLOCK_L - 1 - channel3 // 2
        own_dB = dB_row + (dB_n + own_j * stride_dB_l)  # [1, BLOCK_D, BLOCK_N]; the chunk's t0 is added per chunk
        own_dC = dC_row + (dC_n + own_j * stride_dC_l)
        own_is_dC = (channel3 % 2) == 1
    dA_acc = tl.zeros([1, BLOCK_D, BLOCK_N], dtype=tl.float32)
    dD_acc = tl.zeros([1, BLOCK_D, 1], dtype=tl.float32)
    dbias_acc = tl.zeros([1, BLOCK_D, 1], dtype=tl.float32)
    dt_sum = tl.zeros([1, BLOCK_D, 1], dtype=tl.float32)

    for i in range(0, chunk_hi - chunk_lo):
        chunk = chunk_hi - 1 - i
        t0 = (chunk * BLOCK_L).to(tl.int64)  # the chunk's first step (see _chunk_steps)
        mask_t = chunk * BLOCK_L + l3 < seqlen
        mask_td = mask_t & mask_d3  # [BLOCK_L, BLOCK_D, 1]
        mask_tn = mask_t & mask_n3  # [BLOCK_L, 1, BLOCK_N]

        # The chunk's tiles. Padding steps (t >= seqlen) get dt = 0 and zero inputs: decay 1, nothing added, so they
        # pass h forward and q backward unchanged. B/C stay in their own dtype until a step is picked (registers).
        dt = _load_dt(_chunk_steps(delta_cols, t0, l3, stride_delta_l), mask_td, bias, HAS_DELTA_BIAS, DELTA_SOFTPLUS)
        Cc = _bc_load(C_row + t0 * stride_C_l + (C_n + l3 * stride_C_l), mask_tn, False)  # [BLOCK_L, 1, BLOCK_N]
        dy = _seq_load(_chunk_steps(dout_cols, t0, l3, stride_dout_l), mask_td)  # [BLOCK_L, BLOCK_D, 1]
        if HAS_Z:
            zc = _seq_load(_chunk_steps(z_cols, t0, l3, stride_z_l), mask_td)
            dy = dy * zc * _sigmoid(zc)
        if not SEGMENT_ADJOINT:
            dtu = dt * _seq_load(_chunk_steps(u_cols, t0, l3, stride_u_l), mask_td)
            Bc = _bc_load(B_row + t0 * stride_B_l + (B_n + l3 * stride_B_l), mask_tn, False)
            # The chunk's start state: the last saved one, carried over the chunks between it and this one.
            h = tl.load(states_row + ((chunk // SAVE_EVERY) * dstate + n3 * stride_states_n), mask=mask_nd, other=0.0)
            if SAVE_EVERY > 1:
                for k in range(0, chunk % SAVE_EVERY):
                    before = chunk - chunk % SAVE_EVERY + k  # (a tensor: chunk is one)
                    t_before = (before * BLOCK_L).to(tl.int64)
                    mask_t_before = before * BLOCK_L + l3 < seqlen
                    mask_td_before = mask_t_before & mask_d3
                    dt_b = _load_dt(
                        _chunk_steps(delta_cols, t_before, l3, stride_delta_l), mask_td_before, bias, HAS_DELTA_BIAS,
                        DELTA_SOFTPLUS,
                    )  # fmt: skip
                    dtu_b = dt_b * _seq_load(_chunk_steps(u_cols, t_before, l3, stride_u_l), mask_td_before)
                    B_b = _bc_load(
                        B_row + t_before * stride_B_l + (B_n + l3 * stride_B_l), mask_t_before & mask_n3, False
                    )
                    for j in tl.static_range(BLOCK_L):
                        at_j = l3 == j
                        h = tl.exp2(_at(dt_b, at_j) * A2) * h + _at(dtu_b, at_j) * _at(B_b, at_j)
            # Forward over the chunk from its start state, keeping h[t] for every step.
            hs = tl.zeros([BLOCK_L, BLOCK_D, BLOCK_N], dtype=tl.float32)
            for j in tl.static_range(BLOCK_L):
                at_j = l3 == j
                h = tl.exp2(_at(dt, at_j) * A2) * h + _at(dtu, at_j) * _at(Bc, at_j)
                hs = tl.where(at_j, h, hs)
            if SCATTER_DBC:
                dbc_parts = ()  # per step (last first): the step's dB or dC summed over channel pairs
            else:
                dB = tl.zeros([BLOCK_L, 1, BLOCK_N], dtype=tl.float32)
                dC = tl.zeros([BLOCK_L, 1, BLOCK_N], dtype=tl.float32)
            gB = tl.zeros([BLOCK_L, BLOCK_D, 1], dtype=tl.float32)  # sum_n g B
            gah_A = tl.zeros([BLOCK_L, BLOCK_D, 1], dtype=tl.float32)  # sum_n g a[t] h[t-1] A log2(e)
            if HAS_Z:
                yc = tl.zeros([BLOCK_L, BLOCK_D, 1], dtype=tl.float32)  # sum_n C h

        # Backward over the chunk: g[t] = C[t] dy[t] + q, then q <- a[t] g[t]. dB/dC (sums over the channels, across
        # the lanes) are added to memory once per chunk (atomics after every step measured 1.6-7x slower:
        # kernels/NOTES.md, v9): with SCATTER_DBC each step's two tiles are halved over the channel pairs here and the
        # rest of the reduce-scatter runs after the walk; otherwise each step's sums over all the channel lanes are
        # gathered into [BLOCK_L, 1, BLOCK_N] tiles.
        for jj in tl.static_range(BLOCK_L):
            j = BLOCK_L - 1 - jj
            at_j = l3 == j
            dt_j = _at(dt, at_j)  # [1, BLOCK_D, 1]
            dy_j = _at(dy, at_j)
            C_j = _at(Cc, at_j)  # [1, 1, BLOCK_N]
            g = C_j * dy_j + q  # dL/dh[t], [1, BLOCK_D, BLOCK_N]
            q = tl.exp2(dt_j * A2) * g
            if SEGMENT_ADJOINT:
                dt_sum += dt_j
            else:
                h_j = _at(hs, at_j)
                B_j = _at(Bc, at_j)
                dtu_j = _at(dtu, at_j)
                g_ah = g * (h_j - dtu_j * B_j)  # g * a[t] * h[t-1]
                dA_acc += g_ah * dt_j
                gB = tl.where(at_j, tl.sum(g * B_j, axis=2, keep_dims=True), gB)
                gah_A = tl.where(at_j, tl.sum(g_ah * A2, axis=2, keep_dims=True), gah_A)
                if HAS_Z:
                    yc = tl.where(at_j, tl.sum(h_j * C_j, axis=2, keep_dims=True), yc)
                if SCATTER_DBC:
                    dbc_parts = dbc_parts + (_exchange_halves(g * dtu_j, h_j * dy_j, 0),)
                else:
                    dB = tl.where(at_j, tl.sum(g * dtu_j, axis=1, keep_dims=True), dB)  # [BLOCK_L, 1, BLOCK_N]
                    dC = tl.where(at_j, tl.sum(h_j * dy_j, axis=1, keep_dims=True), dC)

        if not SEGMENT_ADJOINT:
            # The chunk's per-channel gradients, from the sums gathered above and the tiles reloaded (cheaper in
            # registers than keeping them across the two walks).
            u = _seq_load(_chunk_steps(u_cols, t0, l3, stride_u_l), mask_td)
            du = dt * gB
            ddt = gah_A * 0.6931471805599453 + u * gB
            if DELTA_SOFTPLUS:
                ddt = ddt * _sigmoid(_seq_load(_chunk_steps(delta_cols, t0, l3, stride_delta_l), mask_td) + bias)
            if HAS_D:
                du += Dv * dy
                dD_acc += tl.sum(dy * u, axis=0, keep_dims=True)
            _seq_store(_chunk_steps(du_cols, t0, l3, stride_du_l), du, mask_td)
            if HAS_Z:
                if HAS_D:
                    yc += Dv * u
                dout = _seq_load(_chunk_steps(dout_cols, t0, l3, stride_dout_l), mask_td)
                sig_z = _sigmoid(zc)
                _seq_store(
                    _chunk_steps(dz_cols, t0, l3, stride_dz_l),
                    dout * yc * sig_z * (1.0 + zc * (1.0 - sig_z)),
                    mask_td,
                )
            ddt = tl.where(mask_td, ddt, 0.0)
            dbias_acc += tl.sum(ddt, axis=0, keep_dims=True)
            _seq_store(_chunk_steps(ddelta_cols, t0, l3, stride_ddelta_l), ddt, mask_td)
            if SCATTER_DBC:
                # Pair the steps' halves up the channel bits until each channel holds one full sum.
                for level in tl.static_range(1, BLOCK_L.bit_length()):
                    paired = ()
                    for k in tl.static_range(len(dbc_parts) // 2):
                        paired = paired + (_exchange_halves(dbc_parts[2 * k], dbc_parts[2 * k + 1], level),)
                    dbc_parts = paired
                own_sum = dbc_parts[0]  # [1, BLOCK_D, BLOCK_N]
                # Every channel of the block writes its sum, masked channels (past dim) included.
                own_ptrs = tl.where(own_is_dC, own_dC + t0 * stride_dC_l, own_dB + t0 * stride_dB_l)
                own_mask = (chunk * BLOCK_L + own_j < seqlen) & mask_n3
                if DBC_PARTIALS:
                    tl.store(own_ptrs, own_sum, mask=own_mask)
                else:
                    tl.atomic_add(own_ptrs, own_sum, mask=own_mask, sem="relaxed")
            else:
                _bc_accumulate(dB_row + t0 * stride_dB_l + (dB_n + l3 * stride_dB_l), dB, mask_tn, DBC_PARTIALS)
                _bc_accumulate(dC_row + t0 * stride_dC_l + (dC_n + l3 * stride_dC_l), dC, mask_tn, DBC_PARTIALS)

    if not SEGMENT_ADJOINT:
        tl.atomic_add(dA_ptr + d3 * dstate + n3 * stride_states_n, dA_acc, mask=mask_nd, sem="relaxed")
        if HAS_D:
            tl.atomic_add(dD_ptr + d3, dD_acc, mask=mask_d3, sem="relaxed")
        if HAS_DELTA_BIAS:
            tl.atomic_add(ddelta_bias_ptr + d3, dbias_acc, mask=mask_d3, sem="relaxed")
    if SEGMENT_ADJOINT or HAS_DSTART:
        # q now holds a[t_lo] g[t_lo] = dL/dh[t_lo - 1] through this segment's steps.
        dstart_ptrs = dstart_ptr + pid_b * stride_dstart_b + d3 * stride_dstart_d + n3 * stride_states_n
        if SEGMENT_ADJOINT:
            tl.store(dstart_ptrs + seg * stride_dstart_s, q, mask=mask_nd)
            tl.store(dtsum_ptr + (pid_b * dim + d3) * n_segments + seg, dt_sum, mask=mask_d3)
        else:
            tl.store(dstart_ptrs, q, mask=mask_nd & (seg == 0))


@triton.jit
def _chunk_steps(cols, t0, l3, stride_l):
    # A sequence's pointers over a chunk: `cols` moved to the chunk's first step t0 (64-bit: time offsets are strided
    # in channel-last memory and may pass 2^31), plus the steps l3 [BLOCK_L, 1, 1], which are compile-time offsets when
    # the time stride is 1, so the loads and stores take them as immediates.
    return cols + t0 * stride_l + l3 * stride_l


@triton.jit
def _at(tile, at_j):
    # Step j of a chunk tile (time on axis 0, held inside each thread), keeping the axis: [1, ...], fp32. at_j is
    # `time index == j` for a compile-time j; adding -0.0 is exact for every value (0.0 would turn -0.0 into +0.0), so
    # the compiler folds the masked sum into picking one register (and converting only that one).
    return tl.sum(tl.where(at_j, tile.to(tl.float32), -0.0), axis=0, keep_dims=True)


def _num_warps(num_warps: int, block_n: int, block_d: int) -> tuple[int, bool]:
    """Keep every warp on the state and channel axes, so the time axis stays inside each thread: the scans are then
    loops within a thread, and the chunk's first/last step can be picked by an ordered in-thread fold. Returns the
    warps and whether the time axis is in-thread (not when even one warp has more lanes than state x channel pairs)."""
    while num_warps > 1 and 32 * num_warps > block_n * block_d:
        num_warps //= 2
    return num_warps, 32 * num_warps <= block_n * block_d


def _lanes_over_states(num_warps: int, block_n: int, block_d: int) -> int:
    """Lanes over the states in the backward's [BLOCK_L, BLOCK_D, BLOCK_N] tiles, as the loads lay them out (the
    channels take the lanes first, then the states): how many copies `_seq_load` repeats a sequence tile into. Only
    speed depends on it; any power of two gives the same results."""
    return max(1, min(block_n, 32 * num_warps // block_d))


def _num_sms(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).multi_processor_count


def _sm_registers(device: torch.device) -> int | None:
    """32-bit registers per SM of a CUDA device, else None (the SM count is `_num_sms`)."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).regs_per_multiprocessor


def _register_cap(cfg: dict[str, int], programs: int, device: torch.device) -> dict[str, int]:
    """`cfg` with its `maxnreg` lowered so that all `programs` programs of `cfg["num_warps"]` warps are resident at
    once, where the configured cap leaves some for a second wave and a cap of at least MIN_REGISTER_CAP does not.
    Unchanged without a cap, off CUDA, or where the grid is several waves anyway (segmented grids aim at several).
    H100, (8, 2048, 2048, 16) (the 370M training shape): 2048 backward programs, 16 per SM at 128 registers, fwd+bwd
    2495 us against 2579 at 168 registers and two waves (kernels/NOTES.md, session 9)."""
    sms, registers = _num_sms(device), _sm_registers(device)
    if "maxnreg" not in cfg or not sms or not registers:
        return cfg
    per_sm = triton.cdiv(programs, sms)
    fits = registers // (per_sm * 32 * cfg["num_warps"]) // 8 * 8  # registers are given out 8 per thread at a time
    if MIN_REGISTER_CAP <= fits < cfg["maxnreg"]:
        return {**cfg, "maxnreg": fits}
    return cfg


def _block_d(
    block_d: int, dim: int, groups: int, batch: int = 1, device: torch.device | None = None, min_programs: int = 0
) -> int:
    """Largest power of two <= block_d that keeps every program's channels in one B/C group, shrunk (down to 2) while
    the grid would give fewer than `min_programs` programs per SM (only with a device)."""
    sms = _num_sms(device) if device is not None else None
    if sms:
        while block_d > 2 and batch * triton.cdiv(dim, block_d) < min_programs * sms:
            block_d //= 2
    per_group = dim // groups
    if groups == 1:
        return block_d
    while block_d > 1 and per_group % block_d:
        block_d //= 2
    return block_d


def _plan(
    kind: str,
    block_d: int,
    block_l: int,
    batch: int,
    dim: int,
    seqlen: int,
    groups: int,
    device,
    segment_block_d: int | None = None,
) -> tuple:
    """(BLOCK_D, steps per segment, segments) for one direction ("fwd" or "bwd").

    Segments (sequence-parallel scan) when the grid of `batch * dim / BLOCK_D` programs would give fewer than
    MIN_PROGRAMS_PER_SM per SM and the sequence has room for MIN_SEGMENTS SEGMENT_MIN_LEN segments: then channel
    blocks of `segment_block_d` (default `block_d`; the launchers pass SEGMENT_BLOCK_D) and as many segments as give
    ~SEGMENT_PROGRAMS_PER_SM programs per SM. Otherwise one segment and the channel block shrinks instead (the
    earlier remedy, kept where the sequence is short). `SEGMENT_LEN[kind]` overrides the choice on any device."""
    full_block_d = _block_d(block_d, dim, groups)
    seg_block_d = _block_d(segment_block_d or block_d, dim, groups)
    padded = triton.cdiv(max(seqlen, 1), block_l) * block_l  # steps in whole chunks
    forced = SEGMENT_LEN[kind]
    if forced is not None:
        if forced <= 0 or forced % block_l:
            raise ValueError(f"SEGMENT_LEN[{kind!r}] must be a positive multiple of BLOCK_L={block_l}, got {forced}")
        seg_len = min(forced, padded)
    else:
        seg_len = padded
        sms = _num_sms(device)
        underfilled = sms and batch * triton.cdiv(dim, full_block_d) < MIN_PROGRAMS_PER_SM[kind] * sms
        if underfilled and seqlen >= MIN_SEGMENTS * SEGMENT_MIN_LEN:
            programs = batch * triton.cdiv(dim, seg_block_d)
            n_segments = min(triton.cdiv(SEGMENT_PROGRAMS_PER_SM * sms, programs), seqlen // SEGMENT_MIN_LEN)
            seg_len = triton.cdiv(triton.cdiv(seqlen, n_segments), block_l) * block_l
    n_segments = triton.cdiv(padded, seg_len)
    if n_segments == 1:
        return _block_d(block_d, dim, groups, batch, device, MIN_PROGRAMS_PER_SM[kind]), padded, 1
    return seg_block_d, seg_len, n_segments


def _direction_plan(kind: str, dstate: int, batch: int, dim: int, seqlen: int, groups: int, device) -> tuple:
    """(launch config less BLOCK_D, BLOCK_D, steps per segment, segments) of one direction from CONFIGS and
    SEGMENT_BLOCK_D (see `_plan`)."""
    cfg = _config(kind, dstate)
    segment_block_d = _by_dstate(SEGMENT_BLOCK_D[kind], dstate)
    plan = _plan(kind, cfg.pop("BLOCK_D"), cfg["BLOCK_L"], batch, dim, seqlen, groups, device, segment_block_d)
    return cfg, *plan


def _split_bc(BC: torch.Tensor) -> tuple[int, int, int, int, int]:
    """(groups, stride_b, stride_g, stride_n, stride_l) of `(b, n, l)` or `(b, g, n, l)` B/C (or of their grads)."""
    if BC.dim() == 3:
        return 1, BC.stride(0), 0, BC.stride(1), BC.stride(2)
    return BC.shape[1], *BC.stride()


def _seq_strides(t: torch.Tensor | None) -> tuple[int, int, int]:
    """(batch, channel, time) strides of a `(b, d, l)` sequence, zeros for an absent one."""
    return (0, 0, 0) if t is None else t.stride()


def _state_strides(t: torch.Tensor | None) -> tuple[int, int, int]:
    """(batch, channel, segment) strides of fp32 states: `(b, d, segments, n)` per segment, or one `(b, d, n)` state
    for every segment (segment stride 0); zeros for an absent one."""
    if t is None:
        return 0, 0, 0
    return (t.stride(0), t.stride(1), t.stride(2)) if t.dim() == 4 else (t.stride(0), t.stride(1), 0)


def _strides(name: str, axes: str, strides) -> dict[str, int]:
    """Keyword arguments `stride_<name>_<axis>` for the kernels, e.g. `_strides("u", "bdl", u.stride())`."""
    return {f"stride_{name}_{axis}": int(s) for axis, s in zip(axes, strides, strict=True)}


def _n_chunks(seqlen: int, dstate: int) -> int:
    """Chunk-start states the forward saves: one per forward chunk."""
    return triton.cdiv(max(seqlen, 1), _config("fwd", dstate)["BLOCK_L"])


def _check_chunks(dstate: int) -> None:
    """The forward saves a state per chunk; the backward's chunks must tile those: BLOCK_L x SAVE_EVERY of the
    backward equals the forward's BLOCK_L."""
    fwd_l = _config("fwd", dstate)["BLOCK_L"]
    bwd = _config("bwd", dstate)
    if bwd["BLOCK_L"] * bwd["SAVE_EVERY"] != fwd_l:
        raise ValueError(
            f"the backward's BLOCK_L ({bwd['BLOCK_L']}) x SAVE_EVERY ({bwd['SAVE_EVERY']}) must equal the forward's "
            f"BLOCK_L ({fwd_l})"
        )


def _carry(x: torch.Tensor, dtsum: torch.Tensor, A: torch.Tensor, h0: torch.Tensor | None, reverse: bool) -> None:
    """Run `_segment_carry_kernel` over x `(batch, dim, segments, dstate)` in place (see there)."""
    batch, dim, n_segments, dstate = x.shape
    total = batch * dim * dstate
    block = 256
    h0_strides = (h0.stride(0), h0.stride(1)) if h0 is not None else (0, 0)
    _segment_carry_kernel[(triton.cdiv(total, block),)](
        x,
        dtsum,
        A,
        h0,
        total,
        dim,
        dstate,
        n_segments,
        A.stride(0),
        *h0_strides,
        HAS_H0=h0 is not None,
        REVERSE=reverse,
        BLOCK=block,
        num_warps=4,
    )


def _selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, save_states):
    """Launch the forward. Returns out `(b, d, l)` u.dtype, last_state `(b, d, n)` fp32 and, when `save_states`,
    the chunk-start states `(b, d, n_chunks, n)` fp32 (else an empty tensor). out is channel-last when u is.

    One launch, or with segments (see `_plan`) three: pass 1 (segment end states from zero), the carry, pass 2."""
    u, delta, B, C, z = sequence_strides(u, delta, B, C, z)
    A, D, delta_bias, initial_state = unit_stride(A, D, delta_bias, initial_state)
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    groups, *B_strides = _split_bc(B)
    _, *C_strides = _split_bc(C)
    cfg, block_d, seg_len, n_segments = _direction_plan("fwd", dstate, batch, dim, seqlen, groups, u.device)
    block_l = cfg["BLOCK_L"]  # also the interval of the saved states (see _check_chunks)
    n_chunks = _n_chunks(seqlen, dstate)
    cfg["num_warps"], time_in_thread = _num_warps(cfg["num_warps"], triton.next_power_of_2(dstate), block_d)
    out = empty_sequence(u)
    last_state = empty(batch, dim, dstate, device=u.device, dtype=torch.float32)
    states = empty(batch, dim, n_chunks if save_states else 0, dstate, device=u.device, dtype=torch.float32)
    if seqlen == 0:
        last_state.copy_(initial_state if initial_state is not None else torch.zeros_like(last_state))
        return out, last_state, states
    common = dict(
        u_ptr=u,
        delta_ptr=delta,
        A_ptr=A,
        B_ptr=B,
        C_ptr=C,
        D_ptr=D,
        z_ptr=z,
        delta_bias_ptr=delta_bias,
        out_ptr=out,
        states_ptr=states,
        dim=dim,
        dstate=dstate,
        seqlen=seqlen,
        n_chunks=n_chunks,
        seg_chunks=seg_len // block_l,
        n_segments=n_segments,
        channels_per_group=dim // groups,
        **_strides("u", "bdl", u.stride()),
        **_strides("delta", "bdl", delta.stride()),
        **_strides("z", "bdl", _seq_strides(z)),
        stride_A_d=A.stride(0),
        **_strides("B", "bgnl", B_strides),
        **_strides("C", "bgnl", C_strides),
        **_strides("out", "bdl", out.stride()),
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_DELTA_BIAS=delta_bias is not None,
        DELTA_SOFTPLUS=delta_softplus,
        TIME_IN_THREAD=time_in_thread,
        BLOCK_D=block_d,
        BLOCK_N=triton.next_power_of_2(dstate),
        **cfg,
    )
    n_blocks = triton.cdiv(dim, block_d)
    start = initial_state
    if n_segments > 1:
        # Pass 1: segments 0 .. K-2 from a zero state -> their end states and sums of dt; the carry turns the end
        # states (in place) into every segment's start state.
        start = empty(batch, dim, n_segments, dstate, device=u.device, dtype=torch.float32)
        dtsum = empty(batch, dim, n_segments, device=u.device, dtype=torch.float32)
        _selective_scan_fwd_kernel[(n_blocks, batch, n_segments - 1)](
            start_ptr=None,
            end_ptr=start,
            dtsum_ptr=dtsum,
            seg_offset=0,
            **_strides("start", "bds", _state_strides(None)),
            **_strides("end", "bds", _state_strides(start)),
            HAS_START=False,
            SAVE_STATES=False,
            SEGMENT_ENDS=True,
            **common,
        )
        _carry(start, dtsum, A, initial_state, reverse=False)
    # Pass 2 (or the only pass): every segment from its start state; the last one writes last_state.
    _selective_scan_fwd_kernel[(n_blocks, batch, n_segments)](
        start_ptr=start,
        end_ptr=last_state,
        dtsum_ptr=None,
        seg_offset=0,
        **_strides("start", "bds", _state_strides(start)),
        **_strides("end", "bds", _state_strides(last_state)),
        HAS_START=start is not None,
        SAVE_STATES=save_states,
        SEGMENT_ENDS=False,
        **common,
    )
    return out, last_state, states


def _selective_scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, initial_state, states, delta_softplus):
    """Launch the backward. Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinit), each shaped and typed like
    its input, or None where the input is None; du, ddelta, dz, dB and dC are channel-last where their input is.

    One launch, or with segments (see `_plan`) three: pass 1 (each segment's own adjoint at its start), the reverse
    carry, pass 2. The kernel reads time-major memory (each thread loads its channel's steps as one vector): channel-
    last sequences are staged as time-major copies and their gradients copied back into their layout. In place they
    ran 2x slower than the copies cost, and 10-20x with larger channel blocks (H100, kernels/NOTES.md, v9)."""
    dout, u, delta, B, C, z = sequence_strides(dout, u, delta, B, C, z)
    layout_of = dict(u=u, delta=delta, z=z, B=B, C=C)
    dout, u, delta, B, C, z = (_time_major(t) for t in (dout, u, delta, B, C, z))
    A, D, delta_bias = unit_stride(A, D, delta_bias)
    dlast = None if dlast is None else dlast.contiguous()
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    groups, *B_strides = _split_bc(B)
    _, *C_strides = _split_bc(C)
    cfg, block_d, seg_len, n_segments = _direction_plan("bwd", dstate, batch, dim, seqlen, groups, u.device)
    _check_chunks(dstate)
    n_saved = states.shape[2]
    n_chunks = triton.cdiv(max(seqlen, 1), cfg["BLOCK_L"])
    cfg["num_warps"], _ = _num_warps(cfg["num_warps"], triton.next_power_of_2(dstate), block_d)
    cfg = _register_cap(cfg, batch * triton.cdiv(dim, block_d) * n_segments, u.device)
    parts_per_group = triton.cdiv(dim // groups, block_d)
    partials = (
        DBC_REDUCTION == "partials" and 8 * parts_per_group * batch * groups * dstate * seqlen <= PARTIALS_MAX_BYTES
    )
    f32 = dict(device=u.device, dtype=torch.float32)
    du = empty_sequence(u)
    ddelta = empty_sequence(delta)
    dz = empty_sequence(z) if z is not None else None
    dA = torch.zeros(A.shape, **f32)
    # fp32 dB/dC in B's/C's shape and layout; with partials, one slice per program of a group, summed below.
    dB, dC = (empty_sequence(BC, dtype=torch.float32, poison=False).zero_() for BC in (B, C))
    if partials:
        dB_parts, dC_parts = (empty_sequence(BC, dtype=torch.float32, lead=(parts_per_group,)) for BC in (B, C))
    else:
        dB_parts, dC_parts = dB[None], dC[None]
    dD = torch.zeros(dim, **f32) if D is not None else None
    ddelta_bias = torch.zeros(dim, **f32) if delta_bias is not None else None
    dinit = empty(batch, dim, dstate, **f32) if initial_state is not None else None
    if seqlen > 0:
        common = dict(
            dout_ptr=dout,
            u_ptr=u,
            delta_ptr=delta,
            A_ptr=A,
            B_ptr=B,
            C_ptr=C,
            D_ptr=D,
            z_ptr=z,
            delta_bias_ptr=delta_bias,
            states_ptr=states,
            du_ptr=du,
            ddelta_ptr=ddelta,
            dA_ptr=dA,
            dB_ptr=dB_parts,
            dC_ptr=dC_parts,
            dD_ptr=dD,
            dz_ptr=dz,
            ddelta_bias_ptr=ddelta_bias,
            dim=dim,
            dstate=dstate,
            seqlen=seqlen,
            n_chunks=n_chunks,
            n_saved=n_saved,
            seg_chunks=seg_len // cfg["BLOCK_L"],
            n_segments=n_segments,
            channels_per_group=dim // groups,
            parts_per_group=parts_per_group,
            **_strides("u", "bdl", u.stride()),
            **_strides("delta", "bdl", delta.stride()),
            **_strides("z", "bdl", _seq_strides(z)),
            stride_A_d=A.stride(0),
            **_strides("B", "bgnl", B_strides),
            **_strides("C", "bgnl", C_strides),
            **_strides("dout", "bdl", dout.stride()),
            **_strides("du", "bdl", du.stride()),
            **_strides("ddelta", "bdl", ddelta.stride()),
            **_strides("dz", "bdl", _seq_strides(dz)),
            **_strides("dB", "pbgnl", (dB_parts.stride(0), *_split_bc(dB_parts[0])[1:])),
            **_strides("dC", "pbgnl", (dC_parts.stride(0), *_split_bc(dC_parts[0])[1:])),
            HAS_D=D is not None,
            HAS_Z=z is not None,
            HAS_DELTA_BIAS=delta_bias is not None,
            DELTA_SOFTPLUS=delta_softplus,
            DBC_PARTIALS=partials,
            stride_states_n=1,
            BLOCK_D=block_d,
            BLOCK_N=triton.next_power_of_2(dstate),
            N_LANES=_lanes_over_states(cfg["num_warps"], triton.next_power_of_2(dstate), block_d),
            WIDE=_wide_offsets(dstate, cfg["BLOCK_L"], B_strides, C_strides, dB_parts.stride(), dC_parts.stride()),
            SCATTER_DBC=DBC_SCATTER and block_d == 2 * cfg["BLOCK_L"],
            **cfg,
        )
        n_blocks = triton.cdiv(dim, block_d)
        dend = dlast
        if n_segments > 1:
            # Pass 1: segments 1 .. K-1, adjoint alone from q = 0 after each segment -> what each sends before its
            # start, q[s_k] = a[s_k] g[s_k], and its sum of dt; the reverse carry turns those (in place) into dL/dh
            # at every segment's end.
            dend = empty(batch, dim, n_segments, dstate, **f32)
            dtsum = empty(batch, dim, n_segments, **f32)
            _selective_scan_bwd_kernel[(n_blocks, batch, n_segments - 1)](
                dend_ptr=None,
                dstart_ptr=dend,
                dtsum_ptr=dtsum,
                seg_offset=1,
                **_strides("dend", "bds", _state_strides(None)),
                **_strides("dstart", "bds", _state_strides(dend)),
                HAS_DEND=False,
                HAS_DSTART=True,
                SEGMENT_ADJOINT=True,
                **common,
            )
            _carry(dend, dtsum, A, dlast, reverse=True)
        # Pass 2 (or the only pass): every segment from dL/dh at its end; segment 0 writes d initial_state.
        _selective_scan_bwd_kernel[(n_blocks, batch, n_segments)](
            dend_ptr=dend,
            dstart_ptr=dinit,
            dtsum_ptr=None,
            seg_offset=0,
            **_strides("dend", "bds", _state_strides(dend)),
            **_strides("dstart", "bds", _state_strides(dinit)),
            HAS_DEND=dend is not None,
            HAS_DSTART=dinit is not None,
            SEGMENT_ADJOINT=False,
            **common,
        )
    elif initial_state is not None:
        dinit.copy_(dlast if dlast is not None else torch.zeros_like(dinit))
    if partials and seqlen > 0:
        torch.sum(dB_parts, 0, out=dB)
        torch.sum(dC_parts, 0, out=dC)
    cast = lambda g, like: None if g is None else g.to(like.dtype)
    return (
        _in_layout_of(du, layout_of["u"]),
        _in_layout_of(ddelta, layout_of["delta"]),
        cast(dA, A),
        _in_layout_of(cast(dB, B), layout_of["B"]),
        _in_layout_of(cast(dC, C), layout_of["C"]),
        cast(dD, D),
        _in_layout_of(dz, layout_of["z"]),
        cast(ddelta_bias, delta_bias),
        cast(dinit, initial_state),
    )


def _wide_offsets(dstate: int, block_l: int, *strides) -> bool:
    """Whether the backward's per-state offsets `n * stride_n + step * stride_l` (from one (batch, group) row of B, C,
    dB or dC; the last two strides of each tuple) may pass int32 (then the kernel computes them in 64 bits)."""
    reach = max(abs(s[-2]) * (dstate - 1) + abs(s[-1]) * (block_l - 1) + (dstate - 1) for s in strides)
    return reach >= INT32_OFFSET_LIMIT


def _time_major(t: torch.Tensor | None) -> torch.Tensor | None:
    """A sequence with unit stride on time: itself, or a contiguous copy of a channel-last one."""
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


def _in_layout_of(grad: torch.Tensor | None, like: torch.Tensor | None) -> torch.Tensor | None:
    """`grad` (time-major) in the memory layout of the sequence `like`, copied only where `like` is channel-last."""
    if grad is None or like.stride(-1) == 1:
        return grad
    out = empty_sequence(like, dtype=grad.dtype, poison=False)
    return out.copy_(grad)


# torch.library ops: opaque to torch.compile (fake functions give the output shapes), called by the Function below.


@torch.library.custom_op("mambalab::selective_scan_fwd", mutates_args=())
def _selective_scan_fwd_op(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    initial_state: torch.Tensor | None,
    delta_softplus: bool,
    save_states: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, save_states)


@_selective_scan_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, save_states):
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    n_chunks = _n_chunks(seqlen, dstate) if save_states else 0
    return (
        empty_sequence(u, poison=False),
        u.new_empty(batch, dim, dstate, dtype=torch.float32),
        u.new_empty(batch, dim, n_chunks, dstate, dtype=torch.float32),
    )


@torch.library.custom_op("mambalab::selective_scan_bwd", mutates_args=())
def _selective_scan_bwd_op(
    dout: torch.Tensor,
    dlast: torch.Tensor | None,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    initial_state: torch.Tensor | None,
    states: torch.Tensor,
    delta_softplus: bool,
) -> list[torch.Tensor]:
    grads = _selective_scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, initial_state, states, delta_softplus)
    return [g if g is not None else u.new_empty(0) for g in grads]


@_selective_scan_bwd_op.register_fake
def _(dout, dlast, u, delta, A, B, C, D, z, delta_bias, initial_state, states, delta_softplus):
    like = lambda t: u.new_empty(0) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)
    seq = lambda t: u.new_empty(0) if t is None else empty_sequence(t, poison=False)
    return [seq(u), seq(delta), like(A), seq(B), seq(C), like(D), seq(z), like(delta_bias), like(initial_state)]


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus):
        out, last_state, states = call_op(
            "selective_scan_fwd",
            _selective_scan_fwd,
            u,
            delta,
            A,
            B,
            C,
            D,
            z,
            delta_bias,
            initial_state,
            delta_softplus,
            True,
        )
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, states)
        ctx.delta_softplus = delta_softplus
        return out, last_state

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, initial_state, states = ctx.saved_tensors
        grads = call_op(
            "selective_scan_bwd",
            _selective_scan_bwd,
            dout,
            dlast,
            u,
            delta,
            A,
            B,
            C,
            D,
            z,
            delta_bias,
            initial_state,
            states,
            ctx.delta_softplus,
        )
        present = (u, delta, A, B, C, D, z, delta_bias, initial_state)
        return (*(g if t is not None else None for g, t in zip(grads, present)), None)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    *,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: torch.Tensor | None = None,
):
    """Triton selective scan; same contract as `kernels.selective_scan.ref.selective_scan`.

    Inputs arrive validated from `kernels.selective_scan`. u, delta, z: `(batch, dim, seqlen)`; A `(dim, dstate)`;
    B, C `(batch, dstate, seqlen)` or `(batch, groups, dstate, seqlen)`; D, delta_bias `(dim,)`; initial_state
    `(batch, dim, dstate)`. The sequences (u, delta, z, B, C) may be time-major (time stride 1) or channel-last
    (channel/state stride 1, e.g. `x.transpose(1, 2)` of a `[batch, seqlen, dim]` tensor); out and the sequences'
    gradients take their input's layout. Returns out `(batch, dim, seqlen)` in u's dtype and, with
    `return_last_state`, the last state `(batch, dim, dstate)` fp32.
    """
    tensors = (u, delta, A, B, C, D, z, delta_bias, initial_state)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        out, last_state = _SelectiveScanFn.apply(*tensors, delta_softplus)
    else:
        out, last_state, _ = call_op("selective_scan_fwd", _selective_scan_fwd, *tensors, delta_softplus, False)
    return (out, last_state) if return_last_state else out
