"""Memory layouts for kernel tests: the mixer's channel-last views, and a spy that records what a kernel launch reads.

A `[batch, seqlen, channels]` projection (an `nn.Linear` output) hands the kernels transposed `(batch, channels,
seqlen)` views; the kernels must read those without a copy and lay their outputs and gradients out the same way. (The
mixer itself now works channel-major, see backbone/projections.py; channel-last inputs stay supported for users.)
"""

from __future__ import annotations

import torch


def projection_views(*parts: torch.Tensor) -> list[torch.Tensor]:
    """The values of `parts` (each `(batch, ..., seqlen)`) as channel-last views into one `[batch, seqlen, sum of
    channels]` tensor, as `xz = in_proj(h)` gives x and z, or `x_dbl = x_proj(x)` gives dt, B and C.

    With a single part the buffer gets one extra channel, so the time stride is not the channel count either.
    """
    batch, seqlen = parts[0].shape[0], parts[0].shape[-1]
    flat = [p.reshape(batch, -1, seqlen) for p in parts]
    if len(parts) == 1:
        flat.append(parts[0].new_zeros(batch, 1, seqlen))
    base = torch.cat(flat, dim=1).transpose(1, 2).contiguous()  # [batch, seqlen, channels]
    views, start = [], 0
    for part, f in zip(parts, flat):
        width = f.shape[1]
        views.append(base[..., start : start + width].transpose(1, 2).unflatten(1, part.shape[1:-1]))
        start += width
    return views


def channel_last_copy(t: torch.Tensor) -> torch.Tensor:
    """Same values, compact channel-last memory (`[batch, seqlen, ...]` transposed), like an output of the kernels."""
    return t.movedim(-1, 1).contiguous().movedim(1, -1)


def is_channel_last(t: torch.Tensor) -> bool:
    """Compact channel-last: `(batch, ..., seqlen)` stored as `[batch, seqlen, ...]` (with seqlen 1 that is also
    contiguous: the stride of a size-1 axis does not matter)."""
    return t.movedim(-1, 1).is_contiguous()


class LaunchSpy:
    """Stands in for a `@triton.jit` kernel: `spy[grid](*args, **kwargs)` records the tensor arguments (positional
    and keyword), then launches."""

    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self.launches: list[list[torch.Tensor]] = []
        self.constants: list[dict] = []  # per launch, the keyword arguments that are not tensors (constexprs)

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append([a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)])
            self.constants.append({k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)})
            return self.kernel[grid](*args, **kwargs)

        return launch

    def read_in_place(self, launch: int, *tensors: torch.Tensor | None) -> bool:
        """Whether launch number `launch` got each of `tensors` itself (same memory, same strides), not a copy."""
        got = {(a.data_ptr(), a.stride()) for a in self.launches[launch]}
        return all((t.data_ptr(), t.stride()) in got for t in tensors if t is not None)
