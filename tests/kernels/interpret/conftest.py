"""Interpreter fix-up: Triton 3.6's interpreter truncates fp32 -> bf16 casts (round toward zero), while the GPU rounds
to nearest even. A kernel that rounds intermediates to bf16 (as the fused mixer step does, to match the unfused ops)
would then drift by a biased half unit per rounding on CPU only. Patch the cast to torch's own rounding (nearest even),
so the interpreter computes what the GPU computes.

And its `tl.dot` multiplies bf16 operands as their raw 16-bit integers (numpy has no bf16): widen them to fp32 first,
which is exact, so the product is what the tensor cores compute up to the order of the fp32 sums."""

from __future__ import annotations

import os

import numpy as np
import torch

if os.environ.get("TRITON_INTERPRET") == "1":
    import triton.language as tl
    from triton.runtime import interpreter

    _truncating_cast = interpreter.InterpreterBuilder.cast_impl

    def _cast_rounding_to_nearest(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            rounded = torch.as_tensor(np.array(src.data)).to(torch.bfloat16).view(torch.uint16)
            return interpreter.TensorHandle(rounded.numpy(), dst_type.scalar)
        return _truncating_cast(self, src, dst_type)

    interpreter.InterpreterBuilder.cast_impl = _cast_rounding_to_nearest

    _raw_dot = interpreter.InterpreterBuilder.create_dot

    def _bf16_as_fp32(handle):
        if handle.dtype.scalar != tl.bfloat16:
            return handle
        widened = torch.as_tensor(np.array(handle.data)).view(torch.bfloat16).float()
        return interpreter.TensorHandle(widened.numpy(), tl.float32)

    def _dot_widening_bf16(self, a, b, d, input_precision, max_num_imprecise_acc):
        return _raw_dot(self, _bf16_as_fp32(a), _bf16_as_fp32(b), d, input_precision, max_num_imprecise_acc)

    interpreter.InterpreterBuilder.create_dot = _dot_widening_bf16
