"""Selective scan (Mamba S6) in Triton: one fused forward kernel and one reverse-scan backward kernel.

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

Backward. With `g[t] = dL/dh[t]` the adjoint obeys the reverse recurrence::

    g[t] = a[t+1] * g[t+1] + C[n, t] * dy[t]          g[L-1] = C dy + dL/d(last_state)

which is the same scan run backwards over `(a[t+1], C*dy)`. Each program walks the chunks from the last to the first,
recomputes the chunk's forward states from the saved chunk-start state, scans the adjoint, and forms, with
`a[t] * h[t-1] = h[t] - dt*B*u` (no shifted read of h)::

    du[t]     = dt * sum_n g B + D dy                  ddt[t] = sum_n g A (h - dt B u) + u sum_n g B
    dA[d, n] += sum_t g dt (h - dt B u)                dB[n, t] += sum_d g dt u      dC[n, t] += sum_d dy h
    dD       += sum_t dy u                             d initial_state = a[0] * g[0]
    ddelta    = ddt * sigmoid(delta + delta_bias)      (with softplus)

Layouts. The sequences (u, delta, z, out, B, C and their gradients) are addressed through a stride per axis, time
included: time-major memory and channel-last memory (a transposed `[batch, seqlen, channels]`, as the mixer's Linear
layers give it) both go through without a copy, and out/du/ddelta/dz/dB/dC take their input's layout. The channels
are the tiles' fastest axis, so channel-last loads are the coalesced ones.

dB/dC (shared by the channels of a group) are summed over each program's channels in registers, then across programs
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

# Block shapes, chosen per dstate on an H100 (see kernels/NOTES.md). BLOCK_L is also the interval at which the forward
# saves states for the backward, so the forward and the backward share it.
CONFIGS: dict[str, dict[int, dict[str, int]]] = {
    "fwd": {16: dict(BLOCK_D=16, BLOCK_L=8, num_warps=1), 64: dict(BLOCK_D=4, BLOCK_L=8, num_warps=1)},
    "bwd": {16: dict(BLOCK_D=8, BLOCK_L=8, num_warps=1), 64: dict(BLOCK_D=2, BLOCK_L=8, num_warps=1)},
}
# dB/dC are sums over channels: fp32 atomics into one buffer ("atomics"), or per-program partial slices summed by
# PyTorch afterwards ("partials", which fall back to atomics above PARTIALS_MAX_BYTES of scratch). Both timed the same
# on an H100 (3.35 vs 3.50 ms fwd+bwd at (8, 1536, 2048, 16)); atomics need no scratch.
DBC_REDUCTION = "atomics"
PARTIALS_MAX_BYTES = 2 << 30
# Programs per SM below which the channel block shrinks (long sequences with a small batch would leave SMs idle).
MIN_PROGRAMS_PER_SM = 4


def _config(kind: str, dstate: int) -> dict[str, int]:
    table = CONFIGS[kind]
    key = min((k for k in table if k >= dstate), default=max(table))
    return dict(table[key])


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
    # torch.nn.functional.softplus with its default threshold of 20.
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))), x)


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
    init_ptr,
    out_ptr,
    last_state_ptr,
    states_ptr,
    dim,
    dstate,
    seqlen,
    n_chunks,
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
    stride_init_b,
    stride_init_d,
    stride_out_b,
    stride_out_d,
    stride_out_l,
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_DELTA_BIAS: tl.constexpr,
    HAS_INITIAL_STATE: tl.constexpr,
    DELTA_SOFTPLUS: tl.constexpr,
    SAVE_STATES: tl.constexpr,
    TIME_IN_THREAD: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    # Tiles are time-major, [BLOCK_L, BLOCK_N, BLOCK_D]: the channels are the fastest axis, so threads spread over
    # channels and states and each thread holds all BLOCK_L steps of its (state, channel) pairs; the scan over time
    # is then a loop inside each thread, with no exchange between threads. Every sequence is read and written through
    # its own (batch, channel, time) strides: time-major or channel-last memory (stride 1 on time or on channels;
    # Triton specialises a stride of 1, so either layout gets unit-stride address arithmetic).
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
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
    state_offs = (pid_b * dim + offs_d64[None, :]) * dstate + offs_n[:, None]  # [BLOCK_N, BLOCK_D]

    if HAS_INITIAL_STATE:
        init_ptrs = init_ptr + pid_b * stride_init_b + offs_d64[None, :] * stride_init_d + offs_n[:, None]
        h = tl.load(init_ptrs, mask=mask_nd, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    for chunk in range(0, n_chunks):
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
        Ct = tl.load(C_cols + t64 * stride_C_l, mask=mask_tn, other=0.0).to(tl.float32)

        decay = tl.exp2(dt[:, None, :] * A2[None, :, :])  # [BLOCK_L, BLOCK_N, BLOCK_D]
        inp = (dt * u)[:, None, :] * Bt[:, :, None]  # [BLOCK_L, BLOCK_N, BLOCK_D]
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
            y *= zt * tl.sigmoid(zt)
        tl.store(out_cols + t64 * stride_out_l, y.to(out_ptr.dtype.element_ty), mask=mask_td)

    tl.store(last_state_ptr + state_offs, h, mask=mask_nd)


@triton.jit
def _selective_scan_bwd_kernel(
    dout_ptr,
    dlast_ptr,
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
    dinit_ptr,
    dim,
    dstate,
    seqlen,
    n_chunks,
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
    HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr,
    HAS_DELTA_BIAS: tl.constexpr,
    HAS_DLAST: tl.constexpr,
    HAS_INITIAL_STATE: tl.constexpr,
    DELTA_SOFTPLUS: tl.constexpr,
    TIME_IN_THREAD: tl.constexpr,
    DBC_PARTIALS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    # Same time-major tiles and strided (time-major or channel-last) sequences as the forward: [BLOCK_L, BLOCK_N,
    # BLOCK_D]. The gradients du/ddelta/dz/dB/dC have their own strides (the launcher lays each out like its input).
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    offs_n = tl.arange(0, BLOCK_N)  # [BLOCK_N]
    offs_l = tl.arange(0, BLOCK_L)  # [BLOCK_L]
    mask_d = offs_d < dim
    mask_n = offs_n < dstate
    mask_nd = mask_n[:, None] & mask_d[None, :]  # [BLOCK_N, BLOCK_D]
    offs_d64 = offs_d.to(tl.int64)
    group = (pid_d * BLOCK_D) // channels_per_group

    A = tl.load(A_ptr + offs_d64[None, :] * stride_A_d + offs_n[:, None], mask=mask_nd, other=0.0).to(tl.float32)
    A2 = A * 1.4426950408889634  # [BLOCK_N, BLOCK_D]
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_DELTA_BIAS:
        bias = tl.load(delta_bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)

    u_cols = u_ptr + pid_b * stride_u_b + offs_d64[None, :] * stride_u_d  # [1, BLOCK_D]
    delta_cols = delta_ptr + pid_b * stride_delta_b + offs_d64[None, :] * stride_delta_d
    dout_cols = dout_ptr + pid_b * stride_dout_b + offs_d64[None, :] * stride_dout_d
    du_cols = du_ptr + pid_b * stride_du_b + offs_d64[None, :] * stride_du_d
    ddelta_cols = ddelta_ptr + pid_b * stride_ddelta_b + offs_d64[None, :] * stride_ddelta_d
    if HAS_Z:
        z_cols = z_ptr + pid_b * stride_z_b + offs_d64[None, :] * stride_z_d
        dz_cols = dz_ptr + pid_b * stride_dz_b + offs_d64[None, :] * stride_dz_d
    B_cols = B_ptr + pid_b * stride_B_b + group * stride_B_g + offs_n[None, :] * stride_B_n  # [1, BLOCK_N]
    C_cols = C_ptr + pid_b * stride_C_b + group * stride_C_g + offs_n[None, :] * stride_C_n
    # dB/dC are fp32 (parts_per_group, batch, groups, dstate, seqlen) with partials (this program's own slice, summed
    # afterwards), else (batch, groups, dstate, seqlen) with a part stride of 0.
    part = (pid_d % parts_per_group).to(tl.int64) if DBC_PARTIALS else 0
    dB_cols = dB_ptr + part * stride_dB_p + pid_b * stride_dB_b + group * stride_dB_g + offs_n[None, :] * stride_dB_n
    dC_cols = dC_ptr + part * stride_dC_p + pid_b * stride_dC_b + group * stride_dC_g + offs_n[None, :] * stride_dC_n
    state_offs = (pid_b * dim + offs_d64[None, :]) * dstate + offs_n[:, None]  # [BLOCK_N, BLOCK_D]

    if HAS_DLAST:
        g_next = tl.load(dlast_ptr + state_offs, mask=mask_nd, other=0.0).to(tl.float32)  # dL/dh[chunk end + 1]
    else:
        g_next = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dA_acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)

    for i in range(0, n_chunks):
        chunk = n_chunks - 1 - i
        t = chunk * BLOCK_L + offs_l  # [BLOCK_L]
        t64 = t.to(tl.int64)[:, None]  # [BLOCK_L, 1]
        mask_t = t < seqlen
        mask_td = mask_t[:, None] & mask_d[None, :]  # [BLOCK_L, BLOCK_D]
        mask_td1 = ((t + 1) < seqlen)[:, None] & mask_d[None, :]
        mask_tn = mask_t[:, None] & mask_n[None, :]  # [BLOCK_L, BLOCK_N]

        u = tl.load(u_cols + t64 * stride_u_l, mask=mask_td, other=0.0).to(tl.float32)  # [BLOCK_L, BLOCK_D]
        dt_raw = tl.load(delta_cols + t64 * stride_delta_l, mask=mask_td, other=0.0).to(tl.float32)
        dt_next = tl.load(delta_cols + (t64 + 1) * stride_delta_l, mask=mask_td1, other=0.0).to(tl.float32)
        if HAS_DELTA_BIAS:
            dt_raw += bias[None, :]
            dt_next += bias[None, :]
        if DELTA_SOFTPLUS:
            dt = _softplus(dt_raw)
            dt_next = _softplus(dt_next)
        else:
            dt = dt_raw
        dt = tl.where(mask_td, dt, 0.0)
        dt_next = tl.where(mask_td1, dt_next, 0.0)
        Bt = tl.load(B_cols + t64 * stride_B_l, mask=mask_tn, other=0.0).to(tl.float32)  # [BLOCK_L, BLOCK_N]
        Ct = tl.load(C_cols + t64 * stride_C_l, mask=mask_tn, other=0.0).to(tl.float32)
        dout = tl.load(dout_cols + t64 * stride_dout_l, mask=mask_td, other=0.0).to(tl.float32)  # [BLOCK_L, BLOCK_D]

        # Recompute the chunk's forward states from the saved chunk-start state.
        chunk_offs = ((pid_b * dim + offs_d64[None, :]) * n_chunks + chunk) * dstate + offs_n[:, None]
        h0 = tl.load(states_ptr + chunk_offs, mask=mask_nd, other=0.0)  # [BLOCK_N, BLOCK_D]
        decay = tl.exp2(dt[:, None, :] * A2[None, :, :])  # [BLOCK_L, BLOCK_N, BLOCK_D]
        dtu = dt * u  # [BLOCK_L, BLOCK_D]
        inp = dtu[:, None, :] * Bt[:, :, None]  # [BLOCK_L, BLOCK_N, BLOCK_D]
        run_decay, run_inp = tl.associative_scan((decay, inp), axis=0, combine_fn=_scan_combine)
        hs = run_inp + run_decay * h0[None, :, :]  # [BLOCK_L, BLOCK_N, BLOCK_D]

        dy = dout
        if HAS_Z:
            zt = tl.load(z_cols + t64 * stride_z_l, mask=mask_td, other=0.0).to(tl.float32)
            y = tl.sum(hs * Ct[:, :, None], axis=1)  # [BLOCK_L, BLOCK_D]
            if HAS_D:
                y += Dv[None, :] * u
            sig_z = tl.sigmoid(zt)
            dz = dout * y * sig_z * (1.0 + zt * (1.0 - sig_z))
            tl.store(dz_cols + t64 * stride_dz_l, dz.to(dz_ptr.dtype.element_ty), mask=mask_td)
            dy = dout * zt * sig_z
        if HAS_D:
            dD_acc += tl.sum(dy * u, axis=0)

        # Adjoint: reverse scan over (a[t+1], C[t] * dy[t]), then the carry from the next chunk.
        decay_next = tl.exp2(dt_next[:, None, :] * A2[None, :, :])  # [BLOCK_L, BLOCK_N, BLOCK_D]
        x = dy[:, None, :] * Ct[:, :, None]  # [BLOCK_L, BLOCK_N, BLOCK_D]
        run_decay_next, run_x = tl.associative_scan((decay_next, x), axis=0, combine_fn=_scan_combine, reverse=True)
        g = run_x + run_decay_next * g_next[None, :, :]  # [BLOCK_L, BLOCK_N, BLOCK_D]
        if TIME_IN_THREAD:
            g_next = tl.reduce(g, 0, _pick_first)  # [BLOCK_N, BLOCK_D], dL/dh at the chunk's start
        else:
            g_next = tl.sum(tl.where(offs_l[:, None, None] == 0, g, 0.0), axis=0)

        gB = tl.sum(g * Bt[:, :, None], axis=1)  # [BLOCK_L, BLOCK_D]
        du = dt * gB
        if HAS_D:
            du += Dv[None, :] * dy
        tl.store(du_cols + t64 * stride_du_l, du.to(du_ptr.dtype.element_ty), mask=mask_td)
        g_ah = g * (hs - inp)  # g * a[t] * h[t-1], [BLOCK_L, BLOCK_N, BLOCK_D]
        dA_acc += tl.sum(g_ah * dt[:, None, :], axis=0)
        ddt = tl.sum(g_ah * A[None, :, :], axis=1) + u * gB  # [BLOCK_L, BLOCK_D]
        if DELTA_SOFTPLUS:
            ddt = ddt * tl.sigmoid(dt_raw)
        ddt = tl.where(mask_td, ddt, 0.0)
        dbias_acc += tl.sum(ddt, axis=0)
        tl.store(ddelta_cols + t64 * stride_ddelta_l, ddt.to(ddelta_ptr.dtype.element_ty), mask=mask_td)

        dB = tl.sum(g * dtu[:, None, :], axis=2)  # [BLOCK_L, BLOCK_N]
        dC = tl.sum(hs * dy[:, None, :], axis=2)  # [BLOCK_L, BLOCK_N]
        if DBC_PARTIALS:
            tl.store(dB_cols + t64 * stride_dB_l, dB, mask=mask_tn)
            tl.store(dC_cols + t64 * stride_dC_l, dC, mask=mask_tn)
        else:
            tl.atomic_add(dB_cols + t64 * stride_dB_l, dB, mask=mask_tn, sem="relaxed")
            tl.atomic_add(dC_cols + t64 * stride_dC_l, dC, mask=mask_tn, sem="relaxed")

    tl.atomic_add(dA_ptr + offs_d64[None, :] * dstate + offs_n[:, None], dA_acc, mask=mask_nd, sem="relaxed")
    if HAS_D:
        tl.atomic_add(dD_ptr + offs_d, dD_acc, mask=mask_d, sem="relaxed")
    if HAS_DELTA_BIAS:
        tl.atomic_add(ddelta_bias_ptr + offs_d, dbias_acc, mask=mask_d, sem="relaxed")
    if HAS_INITIAL_STATE:
        # d h[-1] = a[0] * g[0]; g_next now holds g[0].
        dt0 = tl.load(delta_cols, mask=mask_d[None, :], other=0.0).to(tl.float32)  # [1, BLOCK_D]
        if HAS_DELTA_BIAS:
            dt0 += bias[None, :]
        if DELTA_SOFTPLUS:
            dt0 = _softplus(dt0)
        dinit = tl.exp2(dt0 * A2) * g_next  # [BLOCK_N, BLOCK_D]
        tl.store(dinit_ptr + state_offs, dinit, mask=mask_nd)


def _num_warps(num_warps: int, block_n: int, block_d: int) -> tuple[int, bool]:
    """Keep every warp on the state and channel axes, so the time axis stays inside each thread: the scans are then
    loops within a thread, and the chunk's first/last step can be picked by an ordered in-thread fold. Returns the
    warps and whether the time axis is in-thread (not when even one warp has more lanes than state x channel pairs)."""
    while num_warps > 1 and 32 * num_warps > block_n * block_d:
        num_warps //= 2
    return num_warps, 32 * num_warps <= block_n * block_d


def _num_sms(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).multi_processor_count


def _block_d(block_d: int, dim: int, groups: int, batch: int = 1, device: torch.device | None = None) -> int:
    """Largest power of two <= block_d that keeps every program's channels in one B/C group, shrunk (down to 2) while
    the grid would give fewer than MIN_PROGRAMS_PER_SM programs per SM."""
    sms = _num_sms(device) if device is not None else None
    if sms:
        while block_d > 2 and batch * triton.cdiv(dim, block_d) < MIN_PROGRAMS_PER_SM * sms:
            block_d //= 2
    per_group = dim // groups
    if groups == 1:
        return block_d
    while block_d > 1 and per_group % block_d:
        block_d //= 2
    return block_d


def _split_bc(BC: torch.Tensor) -> tuple[int, int, int, int, int]:
    """(groups, stride_b, stride_g, stride_n, stride_l) of `(b, n, l)` or `(b, g, n, l)` B/C (or of their grads)."""
    if BC.dim() == 3:
        return 1, BC.stride(0), 0, BC.stride(1), BC.stride(2)
    return BC.shape[1], *BC.stride()


def _seq_strides(t: torch.Tensor | None) -> tuple[int, int, int]:
    """(batch, channel, time) strides of a `(b, d, l)` sequence, zeros for an absent one."""
    return (0, 0, 0) if t is None else t.stride()


def _n_chunks(seqlen: int, dstate: int) -> int:
    return triton.cdiv(max(seqlen, 1), _config("bwd", dstate)["BLOCK_L"])


def _selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, save_states):
    """Launch the forward. Returns out `(b, d, l)` u.dtype, last_state `(b, d, n)` fp32 and, when `save_states`,
    the chunk-start states `(b, d, n_chunks, n)` fp32 (else an empty tensor). out is channel-last when u is."""
    u, delta, B, C, z = sequence_strides(u, delta, B, C, z)
    A, D, delta_bias, initial_state = unit_stride(A, D, delta_bias, initial_state)
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    groups, *B_strides = _split_bc(B)
    _, *C_strides = _split_bc(C)
    cfg = _config("fwd", dstate)
    block_l = _config("bwd", dstate)["BLOCK_L"]
    n_chunks = _n_chunks(seqlen, dstate)
    cfg["BLOCK_L"] = block_l  # the saved chunk-start states must line up with the backward's chunks
    block_d = _block_d(cfg.pop("BLOCK_D"), dim, groups, batch, u.device)
    cfg["num_warps"], time_in_thread = _num_warps(cfg["num_warps"], triton.next_power_of_2(dstate), block_d)
    out = empty_sequence(u)
    last_state = empty(batch, dim, dstate, device=u.device, dtype=torch.float32)
    states = empty(batch, dim, n_chunks if save_states else 0, dstate, device=u.device, dtype=torch.float32)
    if seqlen == 0:
        last_state.copy_(initial_state if initial_state is not None else torch.zeros_like(last_state))
        return out, last_state, states
    init_strides = (initial_state.stride(0), initial_state.stride(1)) if initial_state is not None else (0, 0)
    grid = (triton.cdiv(dim, block_d), batch)
    _selective_scan_fwd_kernel[grid](
        u,
        delta,
        A,
        B,
        C,
        D,
        z,
        delta_bias,
        initial_state,
        out,
        last_state,
        states,
        dim,
        dstate,
        seqlen,
        n_chunks,
        dim // groups,
        *u.stride(),
        *delta.stride(),
        *_seq_strides(z),
        A.stride(0),
        *B_strides,
        *C_strides,
        *init_strides,
        *out.stride(),
        HAS_D=D is not None,
        HAS_Z=z is not None,
        HAS_DELTA_BIAS=delta_bias is not None,
        HAS_INITIAL_STATE=initial_state is not None,
        DELTA_SOFTPLUS=delta_softplus,
        SAVE_STATES=save_states,
        TIME_IN_THREAD=time_in_thread,
        BLOCK_D=block_d,
        BLOCK_N=triton.next_power_of_2(dstate),
        **cfg,
    )
    return out, last_state, states


def _selective_scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, initial_state, states, delta_softplus):
    """Launch the backward. Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinit), each shaped and typed like
    its input, or None where the input is None; du, ddelta, dz, dB and dC are channel-last where their input is."""
    dout, u, delta, B, C, z = sequence_strides(dout, u, delta, B, C, z)
    A, D, delta_bias = unit_stride(A, D, delta_bias)
    dlast = None if dlast is None else dlast.contiguous()
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    groups, *B_strides = _split_bc(B)
    _, *C_strides = _split_bc(C)
    cfg = _config("bwd", dstate)
    block_d = _block_d(cfg.pop("BLOCK_D"), dim, groups, batch, u.device)
    cfg["num_warps"], time_in_thread = _num_warps(cfg["num_warps"], triton.next_power_of_2(dstate), block_d)
    n_chunks = states.shape[2]
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
        grid = (triton.cdiv(dim, block_d), batch)
        _selective_scan_bwd_kernel[grid](
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
            states,
            du,
            ddelta,
            dA,
            dB_parts,
            dC_parts,
            dD,
            dz,
            ddelta_bias,
            dinit,
            dim,
            dstate,
            seqlen,
            n_chunks,
            dim // groups,
            parts_per_group,
            *u.stride(),
            *delta.stride(),
            *_seq_strides(z),
            A.stride(0),
            *B_strides,
            *C_strides,
            *dout.stride(),
            *du.stride(),
            *ddelta.stride(),
            *_seq_strides(dz),
            dB_parts.stride(0),
            *_split_bc(dB_parts[0])[1:],
            dC_parts.stride(0),
            *_split_bc(dC_parts[0])[1:],
            HAS_D=D is not None,
            HAS_Z=z is not None,
            HAS_DELTA_BIAS=delta_bias is not None,
            HAS_DLAST=dlast is not None,
            HAS_INITIAL_STATE=initial_state is not None,
            DELTA_SOFTPLUS=delta_softplus,
            TIME_IN_THREAD=time_in_thread,
            DBC_PARTIALS=partials,
            BLOCK_D=block_d,
            BLOCK_N=triton.next_power_of_2(dstate),
            **cfg,
        )
    elif initial_state is not None:
        dinit.copy_(dlast if dlast is not None else torch.zeros_like(dinit))
    if partials and seqlen > 0:
        torch.sum(dB_parts, 0, out=dB)
        torch.sum(dC_parts, 0, out=dC)
    cast = lambda g, like: None if g is None else g.to(like.dtype)
    return (
        du,
        ddelta,
        cast(dA, A),
        cast(dB, B),
        cast(dC, C),
        cast(dD, D),
        dz,
        cast(ddelta_bias, delta_bias),
        cast(dinit, initial_state),
    )


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
