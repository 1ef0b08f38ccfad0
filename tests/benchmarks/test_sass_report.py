"""benchmarks/sass_report.py: the scan kernels compiled for an H100 on this CPU machine (Triton's bundled ptxas and
cuobjdump), and a guard on what the backward compiles to."""

from __future__ import annotations

import os

import pytest

from benchmarks.sass_report import KEY_OPCODES, conv_reports, scan_reports

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


def test_conv_kernels_compile_and_list_their_memory_accesses_by_width():
    reports = {r.name.split(" WIDTH")[0]: r for r in conv_reports(2, 64, 256)}
    assert set(reports) == {"conv fwd", "conv bwd one-pass", "conv bwd dpre", "conv bwd dx"}
    for r in reports.values():
        assert r.spill_bytes == 0 and r.instructions > 100, r.line()
        # Every global access is in the width breakdown, and only those.
        assert sum(r.memory.values()) == r.opcodes["LDG"] + r.opcodes["STG"] + r.opcodes["REDG"], r.line()
        assert any(name.startswith("LDG.E") for name in r.memory), r.line()
    for name in ("conv bwd one-pass", "conv bwd dpre"):
        assert any(op.startswith("REDG") for op in reports[name].memory), "dw/dbias are summed by atomics"
    assert "REDG" in KEY_OPCODES and reports["conv bwd dpre"].opcodes["REDG"] > 0, "the atomics column counts REDG"


def test_conv_shifted_taps_come_from_aligned_vector_loads():
    # Time-major bf16: each pass builds its W-1 shifted taps from the lanes of two aligned vector loads
    # (`conv._shifted`, kernels/NOTES.md session 14). A load at the shift itself is misaligned and issues one two-byte
    # load per element (48 a thread in session 13's forward); lanes moved through shared memory or shuffles would show
    # as LDS/STS/SHFL.
    for r in conv_reports(2, 64, 256):
        assert "VEC=8" in r.name, r.line()
        assert r.memory.get("LDG.E.U16", 0) == 0 and r.memory.get("LDG.E.128", 0) > 0, r.line()
        if r.name.startswith(("conv fwd", "conv bwd dx")):  # the others' dw sum over time crosses threads
            assert r.opcodes["LDS"] + r.opcodes["STS"] + r.opcodes["SHFL"] == 0, r.line()
