"""benchmarks/sass_report.py: the scan kernels compiled for an H100 on this CPU machine (Triton's bundled ptxas and
cuobjdump), and a guard on what the backward compiles to."""

from __future__ import annotations

import os

import pytest

from benchmarks.sass_report import scan_reports

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1", reason="compiles for a GPU target; the interpreter compiles nothing"
)


def test_scan_kernels_compile_for_sm90_without_spills():
    reports = {r.name.split(" BLOCK")[0]: r for r in scan_reports(8, 1536, 64, 16)}
    assert set(reports) == {"scan fwd", "scan bwd"}
    fwd, bwd = reports["scan fwd"], reports["scan bwd"]
    for r in (fwd, bwd):
        assert 0 < r.registers <= 255 and r.instructions > 100
        assert r.opcodes["MUFU"] > 0, "exp2/log2 should compile to the special-function unit"
    # The v9 backward fits its registers at the configured block (kernels/NOTES.md): a change that makes it spill
    # (local-memory traffic in the hot loop) shows here before it shows on a GPU.
    assert bwd.spill_bytes == 0 and bwd.opcodes["LDL"] == 0, bwd.line()
    assert fwd.spill_bytes == 0, fwd.line()


def test_segmented_plan_compiles_every_pass():
    # A long single sequence on an H100's 132 SMs: pass 1, the carry and pass 2 in each direction.
    names = [r.name for r in scan_reports(1, 1536, 8192, 16)]
    assert sum("SEGMENT_ENDS" in n for n in names) == 1 and sum("SEGMENT_ADJOINT" in n for n in names) == 1
    assert sum(n.startswith("segment carry") for n in names) == 2
