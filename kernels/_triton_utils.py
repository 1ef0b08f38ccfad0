"""Small helpers shared by the Triton kernels (no kernels of their own)."""

from __future__ import annotations

import os

import numpy as np


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


if os.environ.get("TRITON_INTERPRET", "0") == "1":
    _patch_interpreter_index()
