"""Small helpers shared by the Triton kernels (host-side helpers and one device function; no kernels of their own)."""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
import triton
import triton.language as tl

__all__ = [
    "call_op",
    "channel_last",
    "empty",
    "empty_sequence",
    "pdl",
    "poisoning",
    "prefetch_l2",
    "sequence_strides",
    "unit_stride",
    "wait_for_previous_kernel",
]


def poisoning() -> bool:
    """Fill kernel outputs with NaN before launch (under the interpreter, or with MAMBALAB_KERNELS_POISON=1), so a
    test sees any element a kernel forgot to write."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1" or os.environ.get("MAMBALAB_KERNELS_POISON", "0") == "1"


@functools.cache
def _compute_capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def pdl(device: torch.device) -> bool:
    """Whether to launch a kernel that supports it with programmatic dependent launch (PDL; Hopper and newer GPUs).

    A kernel launched with PDL may start while the kernel before it in the stream is still running: it loads what
    that kernel does not write (weights, states of earlier steps), then calls `wait_for_previous_kernel`, which waits
    until the previous kernel has finished and its writes are visible, and only then reads activations or writes
    anything. Right after its own wait it lets the next kernel start, so at most two kernels overlap and everything
    before the previous one has finished. A kernel without the flag waits for its predecessor as
    usual, so a chain may mix both. In a CUDA graph of many small kernels (a decode step) this hides most of the
    launch gap and the first loads of each kernel. Off on CPU, under the interpreter (which has no `griddepcontrol`)
    and with `MAMBALAB_PDL=0`."""
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1":
        return False
    if os.environ.get("MAMBALAB_PDL", "1") == "0":
        return False
    return _compute_capability(device.index if device.index is not None else torch.cuda.current_device())[0] >= 9


@triton.jit
def prefetch_l2(ptrs):
    """Ask the memory system to bring the lines at `ptrs` (any shape) into L2 (PTX `prefetch.global.L2`): no
    registers are held and nothing waits for them. For the time before `wait_for_previous_kernel` under PDL, where a
    kernel may read only what the previous kernel does not write: the later loads then hit L2. CUDA only (inline PTX),
    so a caller guards it with the same flag as its wait; one pointer per 128-byte line is enough, more are harmless."""
    tl.inline_asm_elementwise(
        "prefetch.global.L2 [$1];\n mov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32, is_pure=False, pack=1
    )


@triton.jit
def wait_for_previous_kernel(USE_PDL: tl.constexpr):
    """The one synchronisation point of a kernel launched with PDL (see `pdl`); a no-op when `USE_PDL` is off.

    Waits until the previous kernel in the stream has finished and its writes are visible, then lets the next kernel
    start. The order is the rule that keeps a chain safe: a kernel triggers its successor only after its own wait, so
    at most two kernels overlap and everything before the previous one has finished. Before this call a kernel may
    load only what the previous kernel does not write, and store nothing."""
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


def _tracing(args) -> bool:
    if torch.compiler.is_compiling():
        return True
    from torch._subclasses.fake_tensor import is_fake

    return any(isinstance(a, torch.Tensor) and is_fake(a) for a in args)


def call_op(name: str, launcher, *args):
    """`torch.ops.mambalab.<name>` while torch.compile traces (so the graph sees one opaque op with a fake function);
    in eager mode the launcher itself, which skips the custom-op dispatch layers (tens of microseconds of host time
    per call, more than a small kernel takes on the GPU)."""
    if _tracing(args):
        return getattr(torch.ops.mambalab, name)(*args)
    return launcher(*args)


def unit_stride(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """For tensors whose last dim the kernels index with stride 1 (weights, states, the norm's rows): copy only a
    tensor that lacks it (the public ops already fix this; a compiled graph may still hand a custom op another
    layout). Sequences go through `sequence_strides` instead."""
    return tuple(t if t is None or t.dim() == 0 or t.stride(-1) == 1 else t.contiguous() for t in tensors)


def sequence_strides(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Sequences `(batch, ..., channels, seqlen)` are indexed with a stride on every axis, so the kernels read any
    layout; copy only a tensor whose time (-1) and channel/state (-2) strides are both != 1, where no load would
    coalesce. Time-major memory and channel-last memory (a transposed `[batch, seqlen, channels]`) go through as
    they are."""
    return tuple(t if t is None or t.stride(-1) == 1 or t.stride(-2) == 1 else t.contiguous() for t in tensors)


def channel_last(t: torch.Tensor) -> bool:
    """Whether a sequence `(batch, ..., channels, seqlen)` keeps its channels, not its steps, at unit stride: a
    transposed view of `[batch, seqlen, ..., channels]` memory."""
    return t.stride(-1) != 1 and t.stride(-2) == 1


def _dense_memory_order(t: torch.Tensor) -> list[int] | None:
    """The dims of `t` from outermost to innermost in memory when `t` covers one dense block (any permutation of a
    contiguous tensor, e.g. the mixer's channel-major `(batch, channels, seqlen)` views of a `[channels, batch *
    seqlen]` matrix), else None."""
    order = sorted(range(t.dim()), key=lambda d: (-t.stride(d), d))
    expected = 1
    for d in reversed(order):
        if t.shape[d] != 1 and t.stride(d) != expected:
            return None
        expected *= t.shape[d]
    return order


def empty_sequence(
    like: torch.Tensor, *, dtype: torch.dtype | None = None, lead: tuple[int, ...] = (), poison: bool = True
) -> torch.Tensor:
    """An uninitialised `(*lead, *like.shape)` tensor for an output or gradient of the sequence `like`
    `(batch, ..., seqlen)`, in `like`'s memory layout, so that a chain of kernels never transposes:

    * channel-last (a transposed `[batch, seqlen, ...]` view, possibly a slice): `[*lead, batch, seqlen, ...]`
      memory;
    * any other dense layout (contiguous, or channel-major `[channels, batch * seqlen]` views): the same dim order;
    * anything else: contiguous.

    NaN-filled when `poison` and `poisoning()`. The fake functions call it too (poison=False), so a compiled graph
    sees the strides the kernels produce."""
    shape = (*lead, *like.shape)
    k = len(lead)
    is_channel_last = channel_last(like)
    order = None if is_channel_last else _dense_memory_order(like)
    if is_channel_last:  # memory order: lead, batch, seqlen, the middle axes
        middle = list(range(k + 2, len(shape)))
        out = like.new_empty(*shape[: k + 1], shape[-1], *shape[k + 1 : -1], dtype=dtype)
        out = out.permute(*range(k + 1), *middle, k + 1)
    elif order is not None:
        out = like.new_empty(*shape[:k], *(like.shape[d] for d in order), dtype=dtype)
        out = out.permute(*range(k), *(k + order.index(d) for d in range(like.dim())))
    else:
        out = like.new_empty(shape, dtype=dtype)
    if poison and poisoning() and out.is_floating_point():
        out.fill_(float("nan"))
    return out


def empty(*shape: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """`torch.empty`, NaN-filled when `poisoning()`."""
    out = torch.empty(*shape, device=device, dtype=dtype)
    if poisoning() and out.is_floating_point():
        out.fill_(float("nan"))
    return out


def _patch_interpreter_index() -> None:
    """Let `range(n)` over a runtime scalar run under `TRITON_INTERPRET=1` with NumPy >= 2.4.

    Triton 3.6's interpreter turns a scalar into a Python int with `int(array)`, where the array has one element but
    one dimension; NumPy 2.4 made that an error. Re-set `__index__` to read the single element instead.
    """
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_mambalab_patched", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    patched._mambalab_patched = True
    interpreter._patch_lang_tensor = patched


def _patch_interpreter_scan() -> None:
    """Run `tl.associative_scan` with a user combine function one step of the scan axis at a time under the
    interpreter, on whole slices, instead of one element at a time (same results, ~100x faster for our tiles).

    The combine functions are elementwise, so applying them to slices is exactly the per-element definition.
    """
    from triton.runtime import interpreter

    scan_ops = interpreter.ScanOps
    if getattr(scan_ops.generic_scan, "_mambalab_patched", False):
        return

    def generic_scan(self, input):
        datas = [np.moveaxis(arg.handle.data, self.axis, 0) for arg in input]
        outs = [np.empty_like(d) for d in datas]
        acc = None
        for i in range(datas[0].shape[0]):
            cur = tuple(self.to_tensor(np.ascontiguousarray(d[i]), arg.dtype) for d, arg in zip(datas, input))
            if acc is None:
                acc = cur
            else:
                ret = self.combine_fn.fn(*acc, *cur)
                acc = ret if isinstance(ret, tuple) else (ret,)
            for out, a in zip(outs, acc):
                out[i] = a.handle.data
        return [self.to_tensor(np.moveaxis(out, 0, self.axis), arg.dtype) for out, arg in zip(outs, input)]

    generic_scan._mambalab_patched = True
    scan_ops.generic_scan = generic_scan


def _patch_interpreter_reduce() -> None:
    """Same for `tl.reduce` with a user combine function: fold along the axis one slice at a time."""
    from triton.runtime import interpreter

    reduce_ops = interpreter.ReduceOps
    if getattr(reduce_ops.generic_reduce, "_mambalab_patched", False):
        return

    def generic_reduce(self, input):
        input, axis = self.unravel(input, self.axis)
        datas = [np.moveaxis(arg.handle.data, axis, 0) for arg in input]
        acc = None
        for i in range(datas[0].shape[0]):
            cur = tuple(self.to_tensor(np.ascontiguousarray(d[i]), arg.dtype) for d, arg in zip(datas, input))
            if acc is None:
                acc = cur
            else:
                ret = self.combine_fn.fn(*acc, *cur)
                acc = ret if isinstance(ret, tuple) else (ret,)
        outs = []
        for a, arg in zip(acc, input):
            data = np.asarray(a.handle.data)
            if self.keep_dims:
                data = np.expand_dims(data, axis)
            outs.append(self.to_tensor(data, arg.dtype))
        return outs

    generic_reduce._mambalab_patched = True
    reduce_ops.generic_reduce = generic_reduce


if os.environ.get("TRITON_INTERPRET", "0") == "1":
    _patch_interpreter_index()
    _patch_interpreter_scan()
    _patch_interpreter_reduce()
