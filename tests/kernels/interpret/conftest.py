"""Interpreter fix-up: Triton 3.6's interpreter truncates fp32 -> bf16 casts (round toward zero), while the GPU rounds
to nearest even. A kernel that rounds intermediates to bf16 (as the fused mixer step does, to match the unfused ops)
would then drift by a biased half unit per rounding on CPU only. Patch the cast to torch's own rounding (nearest even),
so the interpreter computes what the GPU computes."""

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
