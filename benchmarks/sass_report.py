"""What a Triton kernel compiles to on an H100, read on a machine without a GPU: registers, spills and SASS opcodes.

Triton compiles for a GPU it is told about; `compile_for_sm90` hands it a stand-in driver that reports an sm_90
device, so `kernel.warmup(...)` produces the PTX and cubin an H100 would get. The bundled `ptxas -v` gives registers
and spill bytes, the bundled `cuobjdump -sass` the instructions. Counts are static (the whole kernel, loops counted
once), which is what comparing two versions of a loop body needs: kernels/NOTES.md (v8, v9) used them to predict what
to time on the device.

    python benchmarks/sass_report.py [--shape 8,1536,2048,16]      # the selective scan's kernels at that shape
    python benchmarks/sass_report.py --conv [--shape 8,2048,2048]   # the causal conv's forward and backward passes

Besides the opcode counts, each report lists its global-memory instructions by access width (`LDG.E.U16`: a 2-byte
load, `LDG.E.128`: 16 bytes): misaligned tiles show up there as one narrow load per element.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime import driver as triton_driver

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Opcodes worth a column: floating point, special functions (exp2/log2/rcp), shuffles, memory, integer/address work.
KEY_OPCODES = (
    "FFMA", "FMUL", "FADD", "MUFU", "SHFL", "LDG", "STG", "LDS", "STS", "LDL", "STL", "REDG", "BAR",
    "PRMT", "SHF", "IMAD", "IADD3", "LEA", "FSEL",
)  # fmt: skip
_NVIDIA_BIN = Path(triton.backends.nvidia.__file__).parent / "bin"


class _Sm90Driver:
    """The few driver calls `JITFunction.warmup` makes, answered for an sm_90 device (nothing is launched)."""

    backend = "cuda"

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self):
        return torch.device("cpu")

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_device_interface(self):
        return torch.cuda

    def map_python_to_cpp_type(self, ty):
        from triton.backends.nvidia.driver import ty_to_cpp

        return ty_to_cpp(ty)

    @staticmethod
    def is_active():
        return True


@contextlib.contextmanager
def sm90_target():
    """Inside the block, Triton compiles for an sm_90 GPU whatever this machine has."""
    # The driver in use before, restored as it was: reset_active() would build the default driver, and on a machine
    # without a GPU there is none to build.
    previous = triton_driver._active
    triton_driver.set_active(_Sm90Driver())
    try:
        yield
    finally:
        triton_driver._active = previous


@dataclass
class Report:
    name: str
    registers: int
    spill_bytes: int
    stack_bytes: int
    opcodes: collections.Counter
    memory: collections.Counter  # global loads, stores and reductions by their full opcode (access width included)

    @property
    def instructions(self) -> int:
        return sum(self.opcodes.values())

    def line(self) -> str:
        ops = " ".join(f"{k}={self.opcodes[k]}" for k in KEY_OPCODES if self.opcodes[k])
        memory = " ".join(f"{k}={v}" for k, v in sorted(self.memory.items()))
        return (
            f"{self.name}: {self.registers} registers, {self.spill_bytes} B spilled, {self.instructions} instructions"
            f"\n    {ops}\n    memory: {memory}"
        )


def report(compiled, name: str) -> Report:
    """Registers and spills (`ptxas -v` on the kernel's PTX for sm_90a) and opcode counts (`cuobjdump -sass`)."""
    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = Path(tmp, "k.ptx"), Path(tmp, "k.cubin")
        ptx.write_text(compiled.asm["ptx"])
        cubin.write_bytes(compiled.asm["cubin"])
        verbose = subprocess.run(
            [_NVIDIA_BIN / "ptxas", "-v", "-arch=sm_90a", ptx, "-o", os.devnull], capture_output=True, text=True
        ).stderr
        sass = subprocess.run([_NVIDIA_BIN / "cuobjdump", "-sass", cubin], capture_output=True, text=True).stdout

    def number(pattern: str) -> int:
        found = re.search(pattern, verbose)
        return int(found.group(1)) if found else 0

    opcodes, memory = collections.Counter(), collections.Counter()
    for line in sass.splitlines():
        # "        /*0940*/     @!P1 LDG.E.U16 R1, desc[UR4][R2.64] ;" -> LDG (opcodes), LDG.E.U16 (memory)
        found = re.match(r"\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?(([A-Z][A-Z0-9_]*)[.\w]*)", line)
        if found:
            opcodes[found.group(2)] += 1
            if found.group(2) in ("LDG", "STG", "REDG"):
                memory[found.group(1)] += 1
    return Report(
        name=name,
        registers=number(r"Used (\d+) registers"),
        spill_bytes=number(r"(\d+) bytes spill stores"),
        stack_bytes=number(r"(\d+) bytes stack frame"),
        opcodes=opcodes,
        memory=memory,
    )


class _Recorder:
    """Stands in for a `@triton.jit` kernel in a launcher: `kernel[grid](**kwargs)` compiles (no launch) and keeps
    a Report named after the kernel and its block-shape constants."""

    def __init__(self, kernel, name: str, reports: list[Report]):
        self.kernel, self.name, self.reports = kernel, name, reports

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            compiled = self.kernel.warmup(*args, grid=grid, **kwargs)
            shape = " ".join(f"{k}={v}" for k, v in kwargs.items() if k.isupper() and type(v) is int)
            mode = [k for k in ("SEGMENT_ENDS", "SEGMENT_ADJOINT") if kwargs.get(k)]
            self.reports.append(report(compiled, f"{self.name} {shape}" + (f" {mode[0]}" if mode else "")))

        return launch


@contextlib.contextmanager
def _recording(module, names: dict[str, str], **overrides):
    """Within: `module`'s kernels (attribute -> report name in `names`) compile for sm_90 instead of launching, each
    compile adding a Report to the yielded list; `overrides` replace other attributes of `module` meanwhile."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("TRITON_INTERPRET=1 runs kernels in Python and compiles nothing: unset it for sass_report")
    reports: list[Report] = []
    saved = {attr: getattr(module, attr) for attr in (*names, *overrides)}
    for attr, name in names.items():
        setattr(module, attr, _Recorder(saved[attr], name, reports))
    for attr, value in overrides.items():
        setattr(module, attr, value)
    try:
        with sm90_target():
            yield reports
    finally:
        for attr, value in saved.items():
            setattr(module, attr, value)


def scan_reports(batch: int, dim: int, seqlen: int, dstate: int, sms: int = 132) -> list[Report]:
    """The selective scan's kernels as the launchers configure them for this shape on a GPU of `sms` SMs (132: an
    H100; segments and channel blocks follow from it), with bf16 inputs, D, z, delta_bias and softplus: the mixer's
    call."""
    from kernels.selective_scan import scan

    names = {"_selective_scan_fwd_kernel": "scan fwd", "_selective_scan_bwd_kernel": "scan bwd",
             "_segment_carry_kernel": "segment carry"}  # fmt: skip
    # An H100's 64K registers per SM, so that register caps are lowered per grid as on the GPU (scan._register_cap).
    with _recording(scan, names, _num_sms=lambda device: sms, _sm_registers=lambda device: 65536) as reports:
        bf16 = dict(dtype=torch.bfloat16)
        u, delta, z = (torch.randn(batch, dim, seqlen, **bf16) for _ in range(3))
        B, C = (torch.randn(batch, dstate, seqlen, **bf16) for _ in range(2))
        A, D, bias = -torch.rand(dim, dstate), torch.randn(dim), torch.randn(dim)
        scan._selective_scan_fwd(u, delta, A, B, C, D, z, bias, None, True, True)
        states = torch.zeros(batch, dim, scan._n_chunks(seqlen, dstate), dstate)
        scan._selective_scan_bwd(torch.randn_like(u), None, u, delta, A, B, C, D, z, bias, None, states, True)
    return reports


def conv_reports(batch: int, dim: int, seqlen: int, width: int = 4) -> list[Report]:
    """The causal conv's kernels as the launchers configure them, for the mixer's call: bf16 x `(B, D, L)` with time
    at unit stride, bias, SiLU. Forward; the one-pass backward; and the two-pass backward (pass 1: dpre/dw/dbias,
    pass 2: dx) that channel-last inputs take, here compiled with `ONE_PASS_BACKWARD` off."""
    from kernels.causal_conv1d import conv

    names = {
        "_causal_conv1d_fwd_kernel": "conv fwd",
        "_causal_conv1d_bwd_kernel": "conv bwd one-pass",
        "_causal_conv1d_bwd_dpre_kernel": "conv bwd dpre",
        "_causal_conv1d_bwd_dx_kernel": "conv bwd dx",
    }
    one_pass = conv.ONE_PASS_BACKWARD
    with _recording(conv, names) as reports:
        # The mixer's layout: a channel-major [D, B L] matrix viewed as (B, D, L).
        x = torch.randn(dim, batch * seqlen, dtype=torch.bfloat16).unflatten(1, (batch, seqlen)).transpose(0, 1)
        weight, bias = torch.randn(dim, width), torch.randn(dim)
        conv._causal_conv1d_fwd(x, weight, bias, None, True, False)
        try:
            for conv.ONE_PASS_BACKWARD in (True, False):
                conv._causal_conv1d_bwd(torch.randn_like(x), None, x, weight, bias, None, True)
        finally:
            conv.ONE_PASS_BACKWARD = one_pass
    return reports


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", help="batch,dim,seqlen,dstate of the scan (8,1536,2048,16); with --conv "
                                         "batch,dim,seqlen (8,2048,2048)")  # fmt: skip
    parser.add_argument("--sms", type=int, default=132, help="SMs of the GPU the launchers plan for (H100: 132)")
    parser.add_argument("--conv", action="store_true", help="the causal conv's kernels instead of the scan's")
    args = parser.parse_args(argv)
    if args.conv:
        reports = conv_reports(*(int(v) for v in (args.shape or "8,2048,2048").split(",")))
    else:
        reports = scan_reports(*(int(v) for v in (args.shape or "8,1536,2048,16").split(",")), args.sms)
    for r in reports:
        print(r.line())


if __name__ == "__main__":
    main()
