"""Kernel benchmarks: our Triton ops vs our PyTorch references and torch.compile of them, on one GPU.

    python benchmarks/kernels.py                 # everything; writes benchmarks/results/kernels_<gpu>.{json,md}
    python benchmarks/kernels.py --sweep         # also sweep the selective scan's block shapes first
    python benchmarks/kernels.py --quick         # skip the slow reference / torch.compile timings
    python benchmarks/kernels.py --sweep-segments --only scan   # segment lengths / block shapes of the long scans

Inputs as in the anchors of /work/shared/PERFORMANCE.md: bf16 u/delta/z/B/C, fp32 A/D/delta_bias, delta_softplus,
z gating, input-dependent B/C `(batch, dstate, seqlen)`. Every op is checked against an fp32 reference on the same
inputs before it is timed (relative error, max-norm). Times are `triton.testing.do_bench` medians; TB/s counts each
input read once and each output written once.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch
import triton
from triton.testing import do_bench, do_bench_cudagraph

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels.causal_conv1d import conv  # noqa: E402
from kernels.causal_conv1d import ref as conv_ref  # noqa: E402
from kernels.causal_conv1d import step as conv_step
from kernels.rms_norm import fused  # noqa: E402
from kernels.rms_norm import ref as norm_ref  # noqa: E402
from kernels.selective_scan import ref as scan_ref  # noqa: E402
from kernels.selective_scan import scan  # noqa: E402
from kernels.selective_scan import step as scan_step

ANCHORS_US = {  # mamba-ssm 2.3.2 / causal-conv1d 1.7.0 on an H100 80GB HBM3 (PERFORMANCE.md)
    ("scan fwd", (8, 1536, 2048, 16)): 451.5,
    ("scan fwd+bwd", (8, 1536, 2048, 16)): 2452.5,
    ("scan fwd", (4, 5120, 2048, 16)): 737.9,
    ("scan fwd+bwd", (4, 5120, 2048, 16)): 4027.4,
    ("scan fwd", (1, 1536, 65536, 16)): 2206.8,
    ("scan fwd+bwd", (1, 1536, 65536, 16)): 10608.0,
    ("scan fwd+bwd", (2, 2048, 16384, 16)): 7007.5,
    ("conv fwd", (8, 1536, 2048)): 41.4,
    ("conv fwd+bwd", (8, 1536, 2048)): 573.5,
    ("conv fwd+bwd", (1, 1536, 65536)): 576.0,
}
TARGETS_US = {
    ("scan fwd", (8, 1536, 2048, 16)): 300,
    ("scan fwd+bwd", (8, 1536, 2048, 16)): 1600,
    ("scan fwd", (4, 5120, 2048, 16)): 500,
    ("scan fwd+bwd", (4, 5120, 2048, 16)): 2700,
    ("scan fwd", (1, 1536, 65536, 16)): 1500,
    ("scan fwd+bwd", (1, 1536, 65536, 16)): 7000,
    ("scan fwd+bwd", (2, 2048, 16384, 16)): 4700,
    ("conv fwd", (8, 1536, 2048)): 45,
    ("conv fwd+bwd", (8, 1536, 2048)): 150,
    ("conv fwd+bwd", (1, 1536, 65536)): 300,
}

ROWS: list[dict] = []


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def rel_err(fast, ref) -> float:
    fast, ref = fast.float(), ref.float()
    return ((fast - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


MAIN_IMPLS = ("triton", "triton channel-last")  # the rows compared with the anchors and targets


def bench(fn, rep=100) -> float:
    return do_bench(fn, warmup=25, rep=rep, return_mode="median") * 1e3  # us


def bench_graph(fn) -> float | None:
    """GPU time alone: `fn` captured in a CUDA graph and replayed, so host-side launch and autograd overhead (which
    dominates small kernels called from Python, e.g. the conv's ~600 us fwd+bwd wall time) is left out."""
    try:
        return do_bench_cudagraph(fn, rep=50, return_mode="median") * 1e3
    except Exception as err:  # noqa: BLE001 - report and keep benchmarking the rest
        print(f"   CUDA-graph timing failed: {type(err).__name__}: {str(err).splitlines()[0][:100]}", flush=True)
        return None


def record(op, shape, impl, us, moved, err=None, note="", graph_us=None):
    key = (op, tuple(shape))
    anchor = ANCHORS_US.get(key) if impl in MAIN_IMPLS else None
    row = dict(
        op=op,
        shape=list(shape),
        impl=impl,
        us=round(us, 2),
        graph_us=round(graph_us, 2) if graph_us else None,
        tb_s=round(moved / us / 1e6, 3) if moved else None,
        rel_err=err,
        anchor_us=anchor,
        vs_anchor=round(anchor / us, 2) if anchor else None,
        target_us=TARGETS_US.get(key) if impl in MAIN_IMPLS else None,
        note=note,
    )
    ROWS.append(row)
    print(
        f"{op:<14} {str(tuple(shape)):<24} {impl:<16} {us:>11.1f} us  {row['tb_s'] or 0:>6.2f} TB/s"
        + (f"  (GPU alone {graph_us:.1f} us)" if graph_us else "")
        + (f"  err {err:.1e}" if err is not None else "")
        + (f"  anchor {anchor:.1f} us (x{anchor / us:.2f} faster)" if anchor else "")
        + (f"  target {row['target_us']}" if row["target_us"] else "")
        + (f"  {note}" if note else ""),
        flush=True,
    )
    return row


def sequence(batch, channels, seqlen, *, channel_last=False, **kw):
    """`(batch, channels, seqlen)` noise; channel-last = a transposed view of `[batch, seqlen, channels]` memory, the
    layout the mixer hands the kernels (its Linear layers work on `[B, L, D]`)."""
    if channel_last:
        return torch.randn(batch, seqlen, channels, **kw).transpose(1, 2)
    return torch.randn(batch, channels, seqlen, **kw)


def scan_inputs(batch, dim, seqlen, dstate, device="cuda", channel_last=False):
    bf = dict(device=device, dtype=torch.bfloat16, channel_last=channel_last)
    dt0 = torch.exp(torch.rand(dim, device=device) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    return dict(
        u=sequence(batch, dim, seqlen, **bf),
        delta=0.5 * sequence(batch, dim, seqlen, **bf),
        A=-torch.arange(1, dstate + 1, device=device, dtype=torch.float32).repeat(dim, 1)
        * (0.5 + torch.rand(dim, 1, device=device)),
        B=sequence(batch, dstate, seqlen, **bf),
        C=sequence(batch, dstate, seqlen, **bf),
        D=torch.randn(dim, device=device),
        z=sequence(batch, dim, seqlen, **bf),
        delta_bias=dt0 + torch.log(-torch.expm1(-dt0)),  # inverse softplus, as mamba's dt init
    )


def scan_check(inputs, channels=None, grads=True):
    """Relative errors (out, and the gradients) against the fp32 chunked reference, optionally on a channel slice."""
    sl = slice(None) if channels is None else slice(0, channels)
    sub = {
        k: (v[:, sl] if k in ("u", "delta", "z") else v[sl] if k in ("A", "D", "delta_bias") else v)
        for k, v in inputs.items()
    }
    dout = torch.randn_like(sub["u"])
    leaves = {k: v.clone().requires_grad_(grads) for k, v in sub.items()}
    out = scan.selective_scan(**leaves, delta_softplus=True)
    ref_leaves = {k: v.float().clone().requires_grad_(grads) for k, v in sub.items()}
    ref_out = scan_ref.selective_scan(**ref_leaves, delta_softplus=True)
    errs = {"out": rel_err(out, ref_out)}
    if grads:
        g = torch.autograd.grad(out, list(leaves.values()), dout)
        rg = torch.autograd.grad(ref_out, list(ref_leaves.values()), dout.float())
        errs.update({f"d{k}": rel_err(a, b) for k, a, b in zip(leaves, g, rg)})
    del ref_out, ref_leaves
    torch.cuda.empty_cache()
    return errs


def segment_note(shape) -> str:
    """How the scan splits this shape's time axis (empty for a single segment), e.g. 'segments fwd 32 x 2048'."""
    batch, dim, seqlen, dstate = shape
    parts = []
    for kind in ("fwd", "bwd"):
        plan = scan._direction_plan(kind, dstate, batch, dim, seqlen, 1, torch.device("cuda"))
        block_d, seg_len, n_segments = plan[1:]
        if n_segments > 1:
            parts.append(f"{kind} {n_segments} x {seg_len} (BLOCK_D {block_d})")
    return "segments " + ", ".join(parts) if parts else ""


def bench_scan(
    shape,
    *,
    fwd_bwd=True,
    check_grads=False,
    check_channels=None,
    compare_reductions=False,
    channel_last=False,
    compare_single_segment=False,
):
    batch, dim, seqlen, dstate = shape
    inputs = scan_inputs(*shape, channel_last=channel_last)
    impl = "triton channel-last" if channel_last else "triton"
    errs = scan_check(inputs, channels=check_channels, grads=check_grads)
    worst = max(errs.values())
    note = "; ".join(n for n in (segment_note(shape), check_channels and f"checked on {check_channels} channels") if n)
    if check_grads:
        print("   grad rel errs: " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    moved_fwd = nbytes(*inputs.values()) + nbytes(inputs["u"])
    with torch.no_grad():
        us = bench(lambda: scan.selective_scan(**inputs, delta_softplus=True))
    record("scan fwd", shape, impl, us, moved_fwd, errs["out"], note)
    if fwd_bwd:
        leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        dout = torch.randn_like(inputs["u"])

        def step():
            out = scan.selective_scan(**leaves, delta_softplus=True)
            return torch.autograd.grad(out, list(leaves.values()), dout)

        moved = moved_fwd + nbytes(*inputs.values()) + nbytes(dout) + nbytes(*inputs.values())
        record("scan fwd+bwd", shape, impl, bench(step), moved, worst, note, graph_us=bench_graph(step))
        if compare_reductions:  # the other dB/dC reduction than the default, then back to the default
            default = scan.DBC_REDUCTION
            scan.DBC_REDUCTION = other = "partials" if default == "atomics" else "atomics"
            record("scan fwd+bwd", shape, f"triton dB/dC {other}", bench(step), moved, note=f"dB/dC by {other}")
            scan.DBC_REDUCTION = default
    if compare_single_segment:  # the same shape forced onto the single-segment grid (the path before v6)
        saved = dict(scan.SEGMENT_LEN)
        scan.SEGMENT_LEN.update(fwd=1 << 40, bwd=1 << 40)
        try:
            with torch.no_grad():
                us = bench(lambda: scan.selective_scan(**inputs, delta_softplus=True))
            record("scan fwd", shape, "triton 1 segment", us, moved_fwd, note="forced single segment (v5 grid)")
            if fwd_bwd:
                record("scan fwd+bwd", shape, "triton 1 segment", bench(step), moved, note="forced single segment")
        finally:
            scan.SEGMENT_LEN.update(saved)
    torch.cuda.empty_cache()


def bench_scan_refs(shape):
    """Our PyTorch references on the same inputs: chunked (eager and torch.compile) and the sequential oracle."""
    inputs = scan_inputs(*shape)
    moved_fwd = nbytes(*inputs.values()) + nbytes(inputs["u"])
    with torch.no_grad():
        us = bench(lambda: scan_ref.selective_scan(**inputs, delta_softplus=True), rep=300)
        record("scan fwd", shape, "torch ref", us, moved_fwd)
        torch.cuda.synchronize()
        t0 = time.time()
        scan_ref.selective_scan_sequential(**inputs, delta_softplus=True)
        torch.cuda.synchronize()
        record("scan fwd", shape, "sequential ref", (time.time() - t0) * 1e6, moved_fwd, note="one run")
        compiled = torch.compile(scan_ref.selective_scan)
        t0 = time.time()
        compiled(**inputs, delta_softplus=True)
        compile_s = time.time() - t0
        us = bench(lambda: compiled(**inputs, delta_softplus=True), rep=300)
        record("scan fwd", shape, "torch.compile ref", us, moved_fwd, note=f"compile {compile_s:.0f}s")


def bench_conv_refs(shape, width=4):
    x = torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(shape[1], width, device="cuda") / width).requires_grad_()
    b = torch.randn(shape[1], device="cuda", requires_grad=True)
    dout = torch.randn_like(x)
    moved_fb = nbytes(x, w, b, x) + nbytes(x, w, b, dout) + nbytes(x, w, b)

    def step(fn):
        return torch.autograd.grad(fn(x, w, b, activation="silu"), (x, w, b), dout)

    record("conv fwd+bwd", shape, "torch ref", bench(lambda: step(conv_ref.causal_conv1d)), moved_fb)
    compiled = torch.compile(conv_ref.causal_conv1d)
    step(compiled)
    record("conv fwd+bwd", shape, "torch.compile ref", bench(lambda: step(compiled)), moved_fb)


def bench_conv(shape, width=4, *, fwd=True, channel_last=False):
    batch, dim, seqlen = shape
    impl = "triton channel-last" if channel_last else "triton"
    x = sequence(batch, dim, seqlen, device="cuda", dtype=torch.bfloat16, channel_last=channel_last)
    w = torch.randn(dim, width, device="cuda") / width
    b = torch.randn(dim, device="cuda")
    dout = torch.randn_like(x)
    out = conv.causal_conv1d(x, w, b, activation="silu")
    err = rel_err(out, conv_ref.causal_conv1d(x.float(), w, b, activation="silu"))
    moved = nbytes(x, w, b, out)
    if fwd:
        with torch.no_grad():
            record("conv fwd", shape, impl, bench(lambda: conv.causal_conv1d(x, w, b, activation="silu")), moved, err)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]

    def step(fn):
        o = fn(*leaves, activation="silu")
        return torch.autograd.grad(o, leaves, dout)

    g = step(conv.causal_conv1d)
    gr = torch.autograd.grad(
        conv_ref.causal_conv1d(*[t.float() for t in leaves], activation="silu"), leaves, dout.float()
    )
    gerr = max(rel_err(a, c) for a, c in zip(g, gr))
    moved_fb = moved + nbytes(x, w, b, dout) + nbytes(x, w, b)
    record("conv fwd+bwd", shape, impl, bench(lambda: step(conv.causal_conv1d)), moved_fb, max(err, gerr),
           graph_us=bench_graph(lambda: step(conv.causal_conv1d)))  # fmt: skip


def bench_norm(rows=16384, hidden=1536):
    x = torch.randn(rows, hidden, device="cuda", dtype=torch.bfloat16)
    res = torch.randn(rows, hidden, device="cuda", dtype=torch.float32)
    w = 1 + 0.1 * torch.randn(hidden, device="cuda")
    kw = dict(eps=1e-5, prenorm=True, residual_in_fp32=True)
    out, new_res = fused.rms_norm(x, w, None, res, **kw)
    ref_out, _ = norm_ref.rms_norm(x.float(), w, None, res, **kw)
    moved = nbytes(x, res, w, out, new_res)
    with torch.no_grad():
        record(
            "rms_norm fwd",
            (rows, hidden),
            "triton",
            bench(lambda: fused.rms_norm(x, w, None, res, **kw)),
            moved,
            rel_err(out, ref_out),
        )
        record(
            "rms_norm fwd", (rows, hidden), "torch ref", bench(lambda: norm_ref.rms_norm(x, w, None, res, **kw)), moved
        )
        compiled = torch.compile(norm_ref.rms_norm)
        compiled(x, w, None, res, **kw)
        record(
            "rms_norm fwd", (rows, hidden), "torch.compile ref", bench(lambda: compiled(x, w, None, res, **kw)), moved
        )
    leaves = [t.clone().requires_grad_() for t in (x, w, res)]
    dout, dres = torch.randn_like(x), torch.randn_like(res)

    def step(fn):
        o, r = fn(leaves[0], leaves[1], None, leaves[2], **kw)
        return torch.autograd.grad((o, r), leaves, (dout, dres))

    moved_fb = moved + nbytes(x, res, w, dout, dres) + nbytes(x, res, w)
    record("rms_norm fwd+bwd", (rows, hidden), "triton", bench(lambda: step(fused.rms_norm)), moved_fb)
    record("rms_norm fwd+bwd", (rows, hidden), "torch ref", bench(lambda: step(norm_ref.rms_norm)), moved_fb)


def bench_decode(batch=64, dim=1536, dstate=16, width=4):
    state = torch.randn(batch, dim, dstate, device="cuda")
    x, dt, z = (torch.randn(batch, dim, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    A = -torch.rand(dim, dstate, device="cuda")
    B, C = (torch.randn(batch, dstate, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    D, dt_bias = torch.randn(dim, device="cuda"), torch.randn(dim, device="cuda")
    s1, s2 = state.clone(), state.clone()
    err = rel_err(
        scan_step.selective_state_update(s1, x, dt, A, B, C, D, z, dt_bias, dt_softplus=True),
        scan_ref.selective_state_update(
            s2, x.float(), dt.float(), A, B.float(), C.float(), D, z.float(), dt_bias, dt_softplus=True
        ),
    )
    moved = 2 * nbytes(state) + nbytes(x, dt, z, A, B, C, D, dt_bias) + nbytes(x)
    record(
        "state_update",
        (batch, dim, dstate),
        "triton",
        bench(lambda: scan_step.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus=True)),
        moved,
        err,
    )
    record(
        "state_update",
        (batch, dim, dstate),
        "torch ref",
        bench(lambda: scan_ref.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus=True)),
        moved,
    )
    cs = torch.randn(batch, dim, width, device="cuda", dtype=torch.bfloat16)
    w, b = torch.randn(dim, width, device="cuda"), torch.randn(dim, device="cuda")
    moved = 2 * nbytes(cs) + nbytes(x, w, b, x)
    record(
        "conv_update",
        (batch, dim, width),
        "triton",
        bench(lambda: conv_step.causal_conv1d_update(x, cs, w, b, activation="silu")),
        moved,
    )
    record(
        "conv_update",
        (batch, dim, width),
        "torch ref",
        bench(lambda: conv_ref.causal_conv1d_update(x, cs, w, b, activation="silu")),
        moved,
    )


def sweep_scan(shape=(8, 1536, 2048, 16)):
    """Time a few block shapes of the forward and the backward (both at the same chunk length, then backward chunks of
    half the forward's with a register cap); keep the fastest in scan.CONFIGS for this run."""
    dstate = shape[3]
    inputs = scan_inputs(*shape)
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    dout = torch.randn_like(inputs["u"])
    best = {}  # (kind, BLOCK_L) -> (us, config)
    for block_l in (4, 8):
        for kind in ("fwd", "bwd"):
            for block_d, warps in [(16, 1), (8, 1), (4, 1), (16, 2)]:
                cfg = dict(BLOCK_D=block_d, BLOCK_L=block_l, num_warps=warps)
                if kind == "bwd":
                    cfg["SAVE_EVERY"] = 1
                else:  # the backward must walk this forward's chunks (copied: `best` may hold the current dict)
                    scan.CONFIGS["bwd"][dstate] = dict(scan.CONFIGS["bwd"][dstate], BLOCK_L=block_l, SAVE_EVERY=1)
                scan.CONFIGS[kind][dstate] = dict(cfg)
                try:
                    if kind == "fwd":
                        with torch.no_grad():
                            us = bench(lambda: scan.selective_scan(**inputs, delta_softplus=True), rep=50)
                    else:
                        out = scan.selective_scan(**leaves, delta_softplus=True)
                        us = bench(
                            lambda out=out: torch.autograd.grad(out, list(leaves.values()), dout, retain_graph=True),
                            rep=50,
                        )
                        del out
                except Exception as err:  # a shape that does not compile (registers, shared memory) is skipped
                    print(f"sweep {kind} BL={block_l} BD={block_d} w={warps}: failed {type(err).__name__}", flush=True)
                    continue
                print(f"sweep {kind} BLOCK_L={block_l} BLOCK_D={block_d} warps={warps}: {us:.1f} us", flush=True)
                if (kind, block_l) not in best or us < best[(kind, block_l)][0]:
                    best[(kind, block_l)] = (us, cfg)
                ROWS.append(
                    dict(op=f"sweep scan {kind}", shape=list(shape), impl="triton", us=round(us, 1), note=str(cfg))
                )
            if (kind, block_l) in best:  # the backward is timed with the best forward of its BLOCK_L
                scan.CONFIGS[kind][dstate] = dict(best[(kind, block_l)][1])
    totals = {
        bl: best[("fwd", bl)][0] + best[("bwd", bl)][0] for bl in (4, 8) if ("fwd", bl) in best and ("bwd", bl) in best
    }
    block_l = min(totals, key=totals.get)
    scan.CONFIGS["fwd"][dstate] = dict(best[("fwd", block_l)][1])
    # Backward chunks of half the forward's (two per saved state), uncapped and capped at 168 registers (12 one-warp
    # programs per SM), against the best same-length backward above.
    out = scan.selective_scan(**leaves, delta_softplus=True)
    for block_d, maxnreg in [(8, None), (8, 168), (4, 168), (16, None)]:
        cfg = dict(BLOCK_D=block_d, BLOCK_L=block_l // 2, SAVE_EVERY=2, num_warps=1)
        if maxnreg:
            cfg["maxnreg"] = maxnreg
        scan.CONFIGS["bwd"][dstate] = dict(cfg)
        try:
            us = bench(lambda: torch.autograd.grad(out, list(leaves.values()), dout, retain_graph=True), rep=50)
        except Exception as err:  # noqa: BLE001 - a shape that does not compile is skipped
            print(f"sweep bwd {cfg}: failed {type(err).__name__}", flush=True)
            continue
        print(f"sweep bwd {cfg}: {us:.1f} us", flush=True)
        ROWS.append(dict(op="sweep scan bwd", shape=list(shape), impl="triton", us=round(us, 1), note=str(cfg)))
        if us < best[("bwd", block_l)][0]:
            best[("bwd", block_l)] = (us, cfg)
    scan.CONFIGS["bwd"][dstate] = dict(best[("bwd", block_l)][1])
    print(f"sweep best: fwd {scan.CONFIGS['fwd'][dstate]} bwd {scan.CONFIGS['bwd'][dstate]}", flush=True)


def compiled_kernels(fn) -> list[str]:
    """Registers and spills of every compiled variant of a @triton.jit kernel (its constexprs abbreviated)."""
    lines = []
    for cache in fn.device_caches.values():
        for kernel in cache[0].values():
            consts = getattr(getattr(kernel, "src", None), "constants", {}) or {}
            short = {k[-1] if isinstance(k, tuple) else k: v for k, v in consts.items()}
            flags = " ".join(f"{k}={v}" for k, v in short.items() if isinstance(k, str) and k.isupper())
            lines.append(f"{kernel.name}: {kernel.n_regs} regs, {kernel.n_spills} spills  {flags}")
    return lines


def sweep_segments():
    """Time the segmented scan at the long shapes (and the batch-8 one) over forced segment lengths and channel
    blocks, fwd alone and fwd+bwd; rows go to the results' json as 'sweep scan segments'. Leaves the module as it
    was, then prints each compiled kernel's registers and spills."""
    saved_len, saved_cfg = dict(scan.SEGMENT_LEN), {k: dict(v) for k, v in scan.CONFIGS.items()}
    long_lengths = (512, 1024, 2048, 4096, 8192)
    try:
        sweep_segments_shape((1, 1536, 65536, 16), ((16, 8), (8, 4), (32, 16)), long_lengths, saved_cfg)
        sweep_segments_shape((2, 2048, 16384, 16), ((16, 8), (8, 4)), long_lengths, saved_cfg)
        sweep_segments_shape((8, 1536, 2048, 16), ((16, 8),), (256, 512, 1024, 1 << 40), saved_cfg)
    finally:
        scan.SEGMENT_LEN.update(saved_len)
        for kind, table in saved_cfg.items():
            scan.CONFIGS[kind].update(table)
    for fn in (scan._selective_scan_fwd_kernel, scan._selective_scan_bwd_kernel, scan._segment_carry_kernel):
        for line in compiled_kernels(fn):
            print("  " + line, flush=True)


def sweep_segments_shape(shape, blocks, lengths, base_cfg):
    """One shape of `sweep_segments`: every (fwd BLOCK_D, bwd BLOCK_D) in `blocks` x segment length in `lengths`."""
    dstate = shape[3]
    inputs = scan_inputs(*shape)
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    dout = torch.randn_like(inputs["u"])

    def forward():
        with torch.no_grad():
            return scan.selective_scan(**inputs, delta_softplus=True)

    def forward_backward():
        return torch.autograd.grad(scan.selective_scan(**leaves, delta_softplus=True), list(leaves.values()), dout)

    for fwd_d, bwd_d in blocks:
        scan.CONFIGS["fwd"][dstate] = dict(base_cfg["fwd"][dstate], BLOCK_D=fwd_d)
        scan.CONFIGS["bwd"][dstate] = dict(base_cfg["bwd"][dstate], BLOCK_D=bwd_d)
        for seg_len in lengths:
            scan.SEGMENT_LEN.update(fwd=seg_len, bwd=seg_len)
            fwd_us, both_us = bench(forward, rep=50), bench(forward_backward, rep=50)
            note = f"BLOCK_D fwd {fwd_d} bwd {bwd_d}, " + ("1 segment" if seg_len >= shape[2] else f"S={seg_len}")
            print(f"sweep segments {shape}: {note}: fwd {fwd_us:.1f} us, fwd+bwd {both_us:.1f} us", flush=True)
            ROWS.append(dict(op="sweep scan segments", shape=list(shape), impl="triton", us=round(fwd_us, 1),
                             fwd_bwd_us=round(both_us, 1), note=note))  # fmt: skip
    torch.cuda.empty_cache()


def sweep_conv(shape=(8, 1536, 2048), width=4):
    """Time a few tile shapes of the conv forward and of each backward pass in both layouts (GPU time alone, CUDA
    graphs: the wall time of a call is host-bound); keep the fastest in conv.CONFIGS for this run. A backward pass
    is timed as forward + backward with the other pass's tile fixed (the one swept before it, else the default)."""
    w = (torch.randn(shape[1], width, device="cuda") / width).requires_grad_()
    b = torch.randn(shape[1], device="cuda", requires_grad=True)
    one_pass = conv.ONE_PASS_BACKWARD
    for layout in ("", "_channel_last"):
        x = sequence(*shape, device="cuda", dtype=torch.bfloat16, channel_last=bool(layout)).requires_grad_()
        dout = torch.randn_like(x)
        # Time-major: the one-pass backward ("bwd"), then the two passes it replaces (timed with it switched off).
        for kind in ("fwd", "bwd", "bwd_dpre", "bwd_dx") if not layout else ("fwd", "bwd_dpre", "bwd_dx"):
            conv.ONE_PASS_BACKWARD = kind == "bwd"
            key, results = kind + layout, []
            for block_d, block_l, warps in [(16, 128, 4), (8, 256, 4), (32, 64, 4), (64, 32, 4), (128, 16, 4),
                                            (64, 64, 8), (16, 64, 2), (8, 128, 2), (16, 32, 1), (32, 32, 2),
                                            (8, 64, 1), (8, 128, 4), (4, 256, 2), (4, 512, 4),
                                            (16, 256, 8)]:  # fmt: skip
                conv.CONFIGS[key] = dict(BLOCK_D=block_d, BLOCK_L=block_l, num_warps=warps)
                if kind == "fwd":
                    with torch.no_grad():
                        us = bench_graph(lambda x=x: conv.causal_conv1d(x, w, b, activation="silu"))
                else:
                    us = bench_graph(lambda x=x, dout=dout: torch.autograd.grad(
                        conv.causal_conv1d(x, w, b, activation="silu"), (x, w, b), dout))  # fmt: skip
                if us is None:
                    continue
                print(f"sweep conv {key} BLOCK_D={block_d} BLOCK_L={block_l} warps={warps}: {us:.1f} us", flush=True)
                results.append((us, dict(conv.CONFIGS[key])))
                ROWS.append(dict(op=f"sweep conv {key}", shape=list(shape), impl="triton", us=round(us, 1),
                                 note=str(conv.CONFIGS[key])))  # fmt: skip
            conv.CONFIGS[key] = min(results, key=lambda r: r[0])[1]
    conv.ONE_PASS_BACKWARD = one_pass
    print(f"sweep best: conv {conv.CONFIGS}", flush=True)


FAMILIES = ("scan", "conv", "norm", "decode")  # the --only choices, in table order


def family(op: str) -> str:
    """The --only choice a result row belongs to ('scan fwd+bwd' -> 'scan', 'rms_norm fwd' -> 'norm', ...)."""
    if op.startswith("sweep "):
        return family(op.removeprefix("sweep "))
    if op.startswith(("state_update", "conv_update")):
        return "decode"
    return "norm" if op.startswith("rms_norm") else op.split()[0]


def write_results(args, quiet=False):
    gpu = torch.cuda.get_device_name()
    meta = dict(
        gpu=gpu,
        torch=torch.__version__,
        triton=triton.__version__,
        python=platform.python_version(),
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
        scan_configs=scan.CONFIGS,
        conv_configs=conv.CONFIGS,
        conv_one_pass_backward=conv.ONE_PASS_BACKWARD,
    )
    dirs = [Path(__file__).resolve().parent / "results"] + ([Path(os.environ["OUT"])] if os.environ.get("OUT") else [])
    text = merge_and_write(meta, ROWS, args.only, dirs)
    if not quiet:
        print(text)


def _by_date(dates: dict[str, str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for fam in FAMILIES:
        if fam in dates:
            grouped.setdefault(dates[fam], []).append(fam)
    return grouped


def merge_and_write(meta: dict, rows: list[dict], only: str | None, dirs: list[Path]) -> str:
    """Write `kernels_<gpu>.{json,md}` into each of `dirs`. A run limited to one family (`--only`) replaces that
    family's rows and keeps the other families' rows of the file already in the first dir (same GPU), whose run date
    the meta and the markdown then name. Returns the markdown."""
    slug = re.sub(r"[^a-z0-9]+", "-", meta["gpu"].lower()).strip("-")
    earlier_path = dirs[0] / f"kernels_{slug}.json"
    meta = dict(meta)
    if only is not None and earlier_path.exists():
        earlier = json.loads(earlier_path.read_text())
        kept = [r for r in earlier["rows"] if family(r["op"]) != only]
        earlier_dates = dict(earlier["meta"].get("rows_from_earlier_runs", {}))
        for r in kept:
            earlier_dates.setdefault(family(r["op"]), earlier["meta"]["date"])
        earlier_dates.pop(only, None)
        meta["rows_from_earlier_runs"] = earlier_dates
        rows = sorted([*kept, *rows], key=lambda r: FAMILIES.index(family(r["op"])))
    results = dict(meta=meta, rows=rows)
    lines = [
        f"# Kernel benchmarks on {meta['gpu']}",
        "",
        f"torch {meta['torch']}, triton {meta['triton']}; `python benchmarks/kernels.py`; "
        "median of triton.testing.do_bench (wall time, host overhead included); 'GPU alone' replays a CUDA graph "
        "of the same call (do_bench_cudagraph), i.e. kernel time without Python/autograd launch cost; "
        "TB/s counts each input read once and each output written once; "
        "anchors are mamba-ssm 2.3.2 / causal-conv1d 1.7.0 on an H100 (PERFORMANCE.md).",
        "",
        f"Run {meta['date']}"
        + "".join(
            f"; the {', '.join(fams)} rows come from the run of {date}"
            for date, fams in _by_date(meta.get("rows_from_earlier_runs", {})).items()
        )
        + " (a `--only` run replaces one family's rows).",
        "",
        "| op | shape | impl | time (us) | GPU alone (us) | TB/s | rel err | anchor (us) | anchor / ours | target (us) "
        "| note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["op"].startswith("sweep"):
            continue
        cells = [
            r["op"],
            str(tuple(r["shape"])),
            r["impl"],
            f"{r['us']:.1f}",
            f"{r['graph_us']:.1f}" if r.get("graph_us") else "",
            r.get("tb_s") or "",
            f"{r['rel_err']:.1e}" if r.get("rel_err") is not None else "",
            r.get("anchor_us") or "",
            r.get("vs_anchor") or "",
            r.get("target_us") or "",
            r.get("note") or "",
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    text = "\n".join(lines) + "\n"
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        (d / f"kernels_{slug}.json").write_text(json.dumps(results, indent=1))
        (d / f"kernels_{slug}.md").write_text(text)
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="sweep the scan's block shapes first")
    parser.add_argument("--sweep-conv", action="store_true", help="sweep only the conv's tiles (both layouts) first")
    parser.add_argument("--sweep-segments", action="store_true", help="sweep the segmented scan's lengths first")
    parser.add_argument("--quick", action="store_true", help="skip the reference and torch.compile timings")
    parser.add_argument("--only", choices=["scan", "conv", "norm", "decode"], help="benchmark only these ops")
    args = parser.parse_args(argv)
    print(f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}", flush=True)
    torch.manual_seed(0)
    if args.sweep:
        sweep_scan()
    if args.sweep or args.sweep_conv:
        sweep_conv()
    if args.sweep_segments:
        sweep_segments()
        write_results(args, quiet=True)
    refs = not args.quick
    steps = [
        ("scan", lambda: bench_scan((8, 1536, 2048, 16), check_grads=True, compare_reductions=True)),
        ("scan", lambda: bench_scan((8, 1536, 2048, 16), check_grads=True, channel_last=True)),
        ("scan", lambda: bench_scan((4, 5120, 2048, 16), check_channels=512)),
        (
            "scan",
            lambda: bench_scan(
                (1, 1536, 65536, 16), check_channels=256, compare_reductions=True, compare_single_segment=True
            ),
        ),
        ("scan", lambda: bench_scan((2, 2048, 16384, 16), check_channels=256, compare_single_segment=True)),
        ("scan", lambda: bench_scan((8, 1536, 2048, 64), check_channels=512)),
        ("conv", lambda: bench_conv((8, 1536, 2048))),
        ("conv", lambda: bench_conv((8, 1536, 2048), channel_last=True)),
        ("conv", lambda: bench_conv((1, 1536, 65536), fwd=True)),
        ("norm", bench_norm),
        ("decode", bench_decode),
    ]
    if refs:  # the slow ones last, so a time limit cuts them first
        steps += [
            ("conv", lambda: bench_conv_refs((8, 1536, 2048))),
            ("scan", lambda: bench_scan_refs((8, 1536, 2048, 16))),
        ]
    steps = [step for op, step in steps if args.only in (None, op)]
    for step in steps:
        step()
        write_results(args, quiet=True)  # partial results survive a time limit
    write_results(args)


if __name__ == "__main__":
    main()
