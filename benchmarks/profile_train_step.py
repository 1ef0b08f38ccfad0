"""Where a training step's time and memory go: a torch.profiler per-op table and the saved activations by shape.

The same step as `train_throughput.py` (130M shape by default, batch 8 x 2048, bf16 autocast, fused AdamW; full
logits + cross-entropy, or with `--fused-loss` the fused LM head + cross-entropy). It writes
`results/profile_train_step_<gpu>.md` with:
- GPU time per kernel (self CUDA time, summed over the profiled steps, divided by their number), grouped into stages
  (selective scan, conv, norm, matmul, cross-entropy, optimizer, copies/elementwise) and listed op by op;
- the tensors autograd keeps for the backward, by shape and dtype (bytes per step), which is what peak memory
  above the weights and optimizer state consists of.

    python benchmarks/profile_train_step.py [--size 370M] [--batch 8] [--seqlen 2048] [--fused-loss]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import RESULTS, environment, gpu_slug, markdown_table  # noqa: E402
from benchmarks.train_throughput import SIZES, build, eager_step, loss_function  # noqa: E402

# Substrings of kernel names -> stage; the first match wins, so the specific ones come first.
STAGES = [
    ("selective scan", ("selective_scan", "_scan_fwd", "_scan_bwd", "scan_")),
    ("causal conv1d", ("conv1d", "_conv_")),
    ("norm", ("rms_norm", "layer_norm", "_norm_")),
    ("matmul", ("gemm", "matmul", "sm90_xmma", "cutlass", "nvjet", "cublas")),
    ("cross-entropy / softmax", ("softmax", "nll_loss", "cross_entropy", "log_softmax")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("copies / casts / transposes", ("copy", "cast", "transpose", "contiguous", "cat", "fill")),
]


def stage_of(name: str) -> str:
    lowered = name.lower()
    for stage, keys in STAGES:
        if any(k in lowered for k in keys):
            return stage
    return "other elementwise / reductions"


def saved_activations(loss_fn, ids) -> list[dict]:
    """Bytes autograd saves for the backward in one forward, grouped by (shape, dtype); storages counted once."""
    seen: set[int] = set()
    groups: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        key = (tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))
        if storage.data_ptr() not in seen and not isinstance(tensor, torch.nn.Parameter):
            seen.add(storage.data_ptr())
            groups[key][0] += 1
            groups[key][1] += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(ids)
    del loss
    rows = [{"shape": str(list(k[0])), "dtype": k[1], "count": c, "MiB": b / 2**20} for k, (c, b) in groups.items()]
    return sorted(rows, key=lambda r: -r["MiB"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="130M", choices=sorted(SIZES))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--fused-loss", action="store_true", help="fused LM head + cross-entropy (no logits kept)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = build(args.size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    loss_fn = loss_function(model, args.fused_loss)
    ids = torch.randint(0, 50277, (args.batch, args.seqlen + 1), device="cuda")
    for _ in range(3):
        eager_step(optimizer, loss_fn, ids)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            eager_step(optimizer, loss_fn, ids)
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30
    weights_and_state = sum(p.numel() for p in model.parameters()) * 4 * 4 / 2**30  # fp32 weight, grad, 2 moments

    per_op = []
    for event in prof.key_averages():
        us = event.self_device_time_total / args.steps
        if us > 0:
            per_op.append({"kernel": event.key[:90], "stage": stage_of(event.key), "calls": event.count // args.steps,
                           "us/step": us})  # fmt: skip
    per_op.sort(key=lambda r: -r["us/step"])
    total_us = sum(r["us/step"] for r in per_op)
    by_stage: dict[str, float] = defaultdict(float)
    for row in per_op:
        by_stage[row["stage"]] += row["us/step"]
    stages = [{"stage": s, "ms/step": us / 1000, "share": f"{us / total_us:.0%}"} for s, us in
              sorted(by_stage.items(), key=lambda kv: -kv[1])]  # fmt: skip
    for row in per_op:
        row["share"] = f"{row['us/step'] / total_us:.1%}"

    saved = saved_activations(loss_fn, ids)
    saved_gib = sum(r["MiB"] for r in saved) / 1024

    env = environment()
    tokens = args.batch * args.seqlen
    loss_label = "fused LM head + cross-entropy" if args.fused_loss else "logits + cross-entropy"
    text = [
        f"# profile_train_step: {args.size}, batch {args.batch} x {args.seqlen}, {loss_label}\n",
        f"{env['gpu']}, torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}\n",
        f"GPU kernel time {total_us / 1000:.1f} ms/step ({tokens / (total_us / 1e6):,.0f} tokens/s if the GPU never "
        f"idled); peak memory {peak:.1f} GiB, of which fp32 weights + grads + AdamW moments {weights_and_state:.1f} "
        f"GiB and saved activations {saved_gib:.1f} GiB.\n",
        "## GPU time by stage\n",
        markdown_table(stages, ["stage", "ms/step", "share"]),
        "\n## Kernels (top 40 by GPU time)\n",
        markdown_table(per_op[:40], ["kernel", "stage", "calls", "us/step", "share"]),
        "\n## Tensors saved for the backward (one forward)\n",
        markdown_table(saved[:25], ["shape", "dtype", "count", "MiB"]),
    ]
    RESULTS.mkdir(exist_ok=True)
    suffix = "_fused_loss" if args.fused_loss else ""
    out = RESULTS / f"profile_train_step_{args.size}{suffix}_{gpu_slug(env)}.md"
    out.write_text("\n".join(text) + "\n")
    print("\n".join(text))  # noqa: T201 - benchmark output


if __name__ == "__main__":
    main()
