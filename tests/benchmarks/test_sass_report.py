"""benchmarks/sass_report.py: the scan kernels compiled for an H100 on this CPU machine (Triton's bundled ptxas and
cuobjdump), and a guard on what the backward compiles to."""

from __future__ import annotations

import os

import pytest

from benchmarks.sass_report import KEY_OPCODES, conv_reports, scan_reports
from kernels.causal_conv1d import conv

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
    assert set(reports) == {"conv fwd", "conv bwd dpre", "conv bwd dx"}
    for r in reports.values():
        assert r.spill_bytes == 0 and r.instructions > 100, r.line()
        # Every global access is in the width breakdown, and only those.
        assert sum(r.memory.values()) == r.opcodes["LDG"] + r.opcodes["STG"] + r.opcodes["REDG"], r.line()
        assert any(name.startswith("LDG.E") for name in r.memory), r.line()
    assert any(name.startswith("REDG") for name in reports["conv bwd dpre"].memory), "dw/dbias are summed by atomics"
    assert "REDG" in KEY_OPCODES and reports["conv bwd dpre"].opcodes["REDG"] > 0, "the atomics column counts REDG"


def test_conv_bwd_pass1_loads_each_shifted_tap_once():
    # Pass 1 keeps its W taps for both the pre-activation and dw (kernels/NOTES.md, session 13). The three shifted
    # taps (width 4) are misaligned, so each of their elements is a two-byte load: 3 per element a thread owns, not 6.
    cfg = conv.CONFIGS["bwd_dpre"]
    per_thread = cfg["BLOCK_D"] * cfg["BLOCK_L"] // (32 * cfg["num_warps"])
    dpre = next(r for r in conv_reports(2, 64, 256) if r.name.startswith("conv bwd dpre"))
    assert 0 < dpre.memory["LDG.E.U16"] <= 3 * per_thread, dpre.line()
