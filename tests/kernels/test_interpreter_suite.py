"""Runs the Triton kernels' interpreter tests (tests/kernels/interpret) in a subprocess with TRITON_INTERPRET=1.

The interpreter must be switched on before Triton is imported, which in a normal pytest run has already happened;
a fresh interpreter process is the robust way. CI has no GPU: this is how it exercises every kernel.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="already interpreting: the tests ran in-process")
def test_triton_kernels_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "MAMBALAB_KERNELS": "triton", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/kernels/interpret", "-q", "-p", "no:cacheprovider", "-x"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    tail = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, f"interpreter tests failed:\n{tail}"
    assert " passed" in result.stdout and "skipped" not in result.stdout.splitlines()[-1], tail
