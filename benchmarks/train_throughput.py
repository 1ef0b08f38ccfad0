"""Training-step throughput of Mamba language models: tokens/s, ms/step and peak memory.

A full step: forward, cross-entropy, backward, fused AdamW; bf16 autocast over fp32 weights; vocab 50277. The loss is
computed as mamba-ssm's anchor does (full logits, then cross-entropy) and, in a second row, with our fused LM head +
cross-entropy (`MambaLM.token_nll`, no logits stored), eagerly and replayed as one CUDA graph
(`tasks/cuda_graph_step.py`, which removes the host's launch overhead).
Shapes from PERFORMANCE.md: 130M (d_model 768, 24 layers) and 370M (1024, 48) at batch 8 x 2048. In the same run,
the same 130M model on our PyTorch reference kernels (at the batch that fits), and `torch.compile` of it.

    python benchmarks/train_throughput.py [--quick | --steps N]

Each row also gives the SM clock and power the timed steps ran at, and what held the clock down
(`benchmarks/gpu_monitor.py`): short runs can read faster than long ones on the same GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kernels  # noqa: E402
from backbone import MambaConfig  # noqa: E402
from benchmarks.gpu_monitor import COLUMNS as CLOCK_COLUMNS  # noqa: E402
from benchmarks.gpu_monitor import GpuMonitor  # noqa: E402
from benchmarks.report import environment, write_results  # noqa: E402
from tasks.cuda_graph_step import CUDAGraphTrainStep  # noqa: E402
from tasks.lm import MambaLM, MambaLMConfig  # noqa: E402

ANCHORS = {  # PERFORMANCE.md, mamba-ssm 2.3.2 on an H100: tokens/s, peak GiB
    ("130M", 8, 2048): (153_000, 17.8),
    ("370M", 8, 2048): (65_900, 29.6),
}
SIZES = {"130M": (768, 24), "370M": (1024, 48)}


def build(size: str) -> MambaLM:
    d_model, n_layer = SIZES[size]
    return MambaLM(MambaLMConfig(MambaConfig(d_model=d_model, n_layer=n_layer), vocab_size=50277)).cuda()


def loss_function(model, fused_loss: bool):
    """`(ids [B, L + 1]) -> mean next-token loss`, under bf16 autocast."""

    def loss_fn(ids):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if fused_loss:  # LM head + cross-entropy in chunks, no [B, L, V] logits kept (tasks/lm_loss.py)
                nats, count = model.token_nll(ids[:, :-1], ids[:, 1:])
                return nats / count
            # as mamba-ssm's anchor: full logits, then cross-entropy in fp32
            logits = model(ids[:, :-1])
            return F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())

    return loss_fn


def eager_step(optimizer, loss_fn, ids):
    """One eager training step: loss, backward, optimizer step, gradients released."""
    loss = loss_fn(ids)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def time_steps(model, batch, seqlen, *, steps, warmup, backend, compiled=False, fused_loss=False, cuda_graph=False):
    """Mean ms per training step, peak GiB, and the clocks the timed steps ran at (`GpuMonitor.summary()`); eager, or
    replaying the whole step as one CUDA graph."""
    # capturable (only for the graph): the optimizer's step count stays on the GPU, which capture needs.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True, capturable=cuda_graph)
    loss_fn = loss_function(torch.compile(model) if compiled else model, fused_loss)
    ids = torch.randint(0, 50277, (batch, seqlen + 1), device="cuda")
    scope = kernels.use_reference() if backend == "reference" else contextlib.nullcontext()

    with scope:
        if cuda_graph:  # warm-up and capture happen here (tasks/cuda_graph_step.py)
            step = CUDAGraphTrainStep(loss_fn, optimizer, (ids,), warmup_steps=warmup)
        else:
            step = functools.partial(eager_step, optimizer, loss_fn)
            for _ in range(warmup):
                step(ids)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with GpuMonitor() as monitor:
            start.record()
            for _ in range(steps):
                loss = step(ids)
            end.record()
            torch.cuda.synchronize()
    ms = start.elapsed_time(end) / steps
    if not torch.isfinite(loss):
        raise RuntimeError(f"non-finite loss {loss.item()} ({backend})")
    # Replays allocate nothing, so a graph's peak is the one measured while it was captured.
    peak = step.peak_memory_bytes if cuda_graph else torch.cuda.max_memory_allocated()
    return ms, peak / 2**30, monitor.summary()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 timed steps a row instead of 10")
    parser.add_argument("--steps", type=int, help="timed steps a row (overrides --quick); more read a sustained clock")
    parser.add_argument("--with-compile", action="store_true", help="also time torch.compile of the reference path")
    args = parser.parse_args(argv)
    steps, warmup = (3, 2) if args.quick else (10, 3)
    steps = args.steps or steps
    plan = [  # size, batch, seqlen, kernels, torch.compile, fused LM head + cross-entropy, CUDA graph
        ("130M", 8, 2048, "triton", False, False, False),
        ("130M", 8, 2048, "triton", False, True, False),
        ("130M", 8, 2048, "triton", False, True, True),
        ("370M", 8, 2048, "triton", False, False, False),
        ("370M", 8, 2048, "triton", False, True, False),
        ("370M", 8, 2048, "triton", False, True, True),
        ("130M", 1, 2048, "triton", False, False, False),
        ("130M", 1, 2048, "reference", False, False, False),
    ]
    if args.with_compile:  # compiling 24 layers of the unrolled reference scan takes minutes
        plan.append(("130M", 1, 2048, "reference", True, False, False))
    rows = []
    for size, batch, seqlen, backend, compiled, fused_loss, cuda_graph in plan:
        torch.manual_seed(0)
        model = build(size)
        label = backend + (" + torch.compile" if compiled else "")
        loss_label = "fused head + CE" if fused_loss else "logits + CE"
        common = {"model": size, "batch x seqlen": f"{batch} x {seqlen}", "kernels": label, "loss": loss_label,
                  "step": "CUDA graph" if cuda_graph else "eager"}  # fmt: skip
        try:
            ms, peak, clocks = time_steps(model, batch, seqlen, steps=steps, warmup=warmup, backend=backend,
                                          compiled=compiled, fused_loss=fused_loss, cuda_graph=cuda_graph)  # fmt: skip
        except (RuntimeError, torch.OutOfMemoryError) as err:  # report, keep measuring the other rows
            rows.append({**common, "error": str(err).splitlines()[0][:120]})
            continue
        finally:
            del model
            torch.cuda.empty_cache()
        tokens_per_s = batch * seqlen / (ms / 1000)
        row = {**common, "ms/step": ms, "tokens/s": tokens_per_s, "peak GiB": peak, "timed steps": steps, **clocks}
        anchor = ANCHORS.get((size, batch, seqlen))
        if anchor and backend == "triton":
            row["anchor tokens/s"] = anchor[0]
            row["vs anchor"] = f"{tokens_per_s / anchor[0]:.2f}x"
            row["anchor GiB"] = anchor[1]
        rows.append(row)
        print(row, flush=True)  # noqa: T201
    columns = ["model", "batch x seqlen", "kernels", "loss", "step", "ms/step", "tokens/s", "peak GiB",
               "anchor tokens/s", "vs anchor", "anchor GiB", "timed steps", *CLOCK_COLUMNS, "error"]  # fmt: skip
    write_results("train_throughput", environment(), rows, columns)


if __name__ == "__main__":
    main()
