"""Selective scan (Mamba's S6 recurrence) in pure PyTorch: the spec, the test oracle and the CPU path.

Math, per batch b, channel d, state n and step t (inputs in the kernels' `(batch, dim, seqlen)` layout)::

    dt[t]   = softplus(delta[t] + delta_bias)          (softplus only when delta_softplus)
    h[t]    = exp(dt[t] * A[d, n]) * h[t-1] + dt[t] * B[n, t] * u[t]
    y[t]    = sum_n C[n, t] * h[t, n] + D[d] * u[t]
    out[t]  = y[t] * silu(z[t])                         (gating only when z is given)

`h[-1]` is `initial_state` (zeros by default). The state is always fp32; `out` has the dtype of `u`.

Two implementations share that contract:

* `selective_scan_sequential`: one Python step per time step. Slow and obviously right: the oracle in tests.
* `selective_scan`: a two-level scan. The sequence is cut into chunks of about sqrt(L) steps; a short loop scans
  all chunks at once from a zero state, a second short loop carries the true state across chunk boundaries, and a
  closed-form correction adds `exp(cumulative log-decay) * carried state` to every step. Every exponent is a sum of
  non-positive terms, so nothing overflows, and the Python loop runs ~2*sqrt(L) times instead of L: practical for
  training small models on a CPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["selective_scan", "selective_scan_sequential", "selective_state_update"]


def _prepare(u, delta, A, B, C, delta_bias, delta_softplus):
    """Upcast to fp32, discretize, and lay B/C out per channel.

    Returns dt `(b, d, l)`, log-decay `dA = dt * A` `(b, d, l, n)`, input term `dBu` `(b, d, l, n)` and C `(b, d, l, n)`
    (C broadcast over the channels of its group), all fp32.
    """
    dim = u.shape[1]
    dt = delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    B_per_channel = _per_channel(B, dim)
    C_per_channel = _per_channel(C, dim)
    dA = dt[..., None] * A.float()[None, :, None, :]
    dBu = (dt * u.float())[..., None] * B_per_channel
    return dA, dBu, C_per_channel


def _per_channel(BC: torch.Tensor, dim: int) -> torch.Tensor:
    """`(b, n, l)` or `(b, g, n, l)` -> fp32 `(b, d|1, l, n)`; channel d uses group `d // (dim // g)`."""
    if BC.dim() == 3:
        return BC.float().transpose(1, 2)[:, None]  # [b, 1, l, n]
    groups = BC.shape[1]
    return BC.float().repeat_interleave(dim // groups, dim=1).transpose(2, 3)  # [b, d, l, n]


def _finish(y, u, D, z, out_dtype):
    """Add the D skip and the SiLU(z) gate; `y`, `u`, `z` are `(b, d, l)`."""
    if D is not None:
        y = y + D.float()[:, None] * u.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(out_dtype)


def selective_scan_sequential(
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
    """The oracle: the recurrence one time step at a time. Same contract as `selective_scan`."""
    batch, dim, seqlen = u.shape
    dA, dBu, Cc = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    h = u.new_zeros(batch, dim, A.shape[1], dtype=torch.float32) if initial_state is None else initial_state.float()
    ys = []
    # unbind() slices once; indexing inside the loop would make autograd zero-fill a full-size gradient per step.
    for decay_t, dBu_t, C_t in zip(torch.exp(dA).unbind(2), dBu.unbind(2), Cc.expand_as(dBu).unbind(2)):
        h = decay_t * h + dBu_t
        ys.append((h * C_t).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, dim, 0, dtype=torch.float32)
    out = _finish(y, u, D, z, u.dtype)
    return (out, h) if return_last_state else out


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
    chunk_size: int | None = None,
):
    """Selective scan by the two-level (chunked) scan; see the module docstring for the math.

    Args:
        u, delta: `(batch, dim, seqlen)`, any float dtype.
        A: `(dim, dstate)` fp32 (negative real parts for a stable system).
        B, C: `(batch, dstate, seqlen)` or grouped `(batch, groups, dstate, seqlen)` with `dim % groups == 0`.
        D, delta_bias: `(dim,)` or None.  z: `(batch, dim, seqlen)` or None.
        initial_state: `(batch, dim, dstate)` fp32 or None; gradients flow into it.
        chunk_size: steps per chunk (default: about sqrt(seqlen)).

    Returns:
        out `(batch, dim, seqlen)` in u's dtype, and the last state `(batch, dim, dstate)` fp32 when
        `return_last_state`.
    """
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    dA, dBu, Cc = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    carry = u.new_zeros(batch, dim, dstate, dtype=torch.float32) if initial_state is None else initial_state.float()
    if seqlen == 0:
        out = _finish(u.new_zeros(batch, dim, 0, dtype=torch.float32), u, D, z, u.dtype)
        return (out, carry) if return_last_state else out

    T = chunk_size or max(1, math.isqrt(seqlen))
    n_chunks = -(-seqlen // T)
    pad = n_chunks * T - seqlen
    if pad:
        # Padding steps decay by exp(0) = 1 and add nothing, so they leave the last state unchanged.
        dA = F.pad(dA, (0, 0, 0, pad))
        dBu = F.pad(dBu, (0, 0, 0, pad))
    dA = dA.view(batch, dim, n_chunks, T, dstate)
    dBu = dBu.view(batch, dim, n_chunks, T, dstate)

    # Level 1: scan every chunk at once, each from a zero state.  [b, d, chunks, T, n]
    # (unbind() slices once: indexing inside the loops would make autograd zero-fill a full-size gradient per step.)
    h = torch.zeros_like(dBu[:, :, :, 0])
    local = []
    for decay_t, dBu_t in zip(torch.exp(dA).unbind(3), dBu.unbind(3)):
        h = decay_t * h + dBu_t
        local.append(h)
    local_states = torch.stack(local, dim=3)

    # Level 2: carry the true state across chunk boundaries.  decay_from_start <= 1 everywhere.
    decay_from_start = torch.exp(torch.cumsum(dA, dim=3))  # [b, d, chunks, T, n]
    chunk_starts = []
    for chunk_decay, chunk_last in zip(decay_from_start[:, :, :, -1].unbind(2), local_states[:, :, :, -1].unbind(2)):
        chunk_starts.append(carry)
        carry = chunk_decay * carry + chunk_last
    starts = torch.stack(chunk_starts, dim=2)  # [b, d, chunks, n]

    states = local_states + decay_from_start * starts[:, :, :, None, :]
    states = states.view(batch, dim, n_chunks * T, dstate)[:, :, :seqlen]
    y = (states * Cc).sum(-1)
    out = _finish(y, u, D, z, u.dtype)
    return (out, carry) if return_last_state else out


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    *,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """One decoding step of the recurrence; updates `state` in place.

    Args:
        state: `(batch, dim, dstate)` fp32, overwritten with the new state.
        x, dt, z: `(batch, dim)`.  A: `(dim, dstate)`.  B, C: `(batch, dstate)` or `(batch, groups, dstate)`.
        D, dt_bias: `(dim,)` or None.

    Returns:
        out `(batch, dim)` in x's dtype.
    """
    dim = x.shape[1]
    step_dt = dt.float()
    if dt_bias is not None:
        step_dt = step_dt + dt_bias.float()
    if dt_softplus:
        step_dt = F.softplus(step_dt)
    B_step = _per_channel(B[..., None], dim)[:, :, 0]  # [b, d|1, n]
    C_step = _per_channel(C[..., None], dim)[:, :, 0]
    new_state = torch.exp(step_dt[..., None] * A.float()) * state.float() + (step_dt * x.float())[..., None] * B_step
    state.copy_(new_state)
    y = (new_state * C_step).sum(-1)
    return _finish(y[..., None], x[..., None], D, None if z is None else z[..., None], x.dtype)[..., 0]
