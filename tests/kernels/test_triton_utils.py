"""Host-side helpers of the Triton kernels (`kernels/_triton_utils.py`)."""

from __future__ import annotations

import torch

from kernels import _triton_utils
from kernels._triton_utils import pdl


def test_programmatic_dependent_launch_only_on_hopper_cuda_and_not_when_disabled(monkeypatch):
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(_triton_utils, "_compute_capability", lambda index: (9, 0))  # an H100, without one
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.delenv("MAMBALAB_PDL", raising=False)
    assert pdl(cuda)
    assert not pdl(torch.device("cpu"))
    monkeypatch.setenv("MAMBALAB_PDL", "0")
    assert not pdl(cuda)
    monkeypatch.setenv("MAMBALAB_PDL", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter has no griddepcontrol
    assert not pdl(cuda)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(_triton_utils, "_compute_capability", lambda index: (8, 0))  # an A100: no PDL
    assert not pdl(cuda)
