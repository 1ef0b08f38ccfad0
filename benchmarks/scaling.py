"""One Mamba layer against one causal attention layer of the same width, as the sequence grows.

Forward+backward time and peak memory at sequence lengths 1k..128k with the number of tokens per step fixed
(batch = tokens / seqlen). Mamba: one residual block (norm + mixer) at d_model 768. Attention: one pre-norm block
with QKV and output projections around `scaled_dot_product_attention(is_causal=True)`, 12 heads x 64 (the
flash-attention backend), bf16. Mamba's cost should grow linearly in L per token-count (flat here), attention's
quadratically (linear growth here); the plot shows the crossover.

    python benchmarks/scaling.py [--max-seqlen 131072] [--tokens 131072]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backbone import MambaConfig  # noqa: E402
from backbone.block import MambaBlock  # noqa: E402
from benchmarks.report import RESULTS, environment, gpu_slug, write_results  # noqa: E402


class AttentionBlock(nn.Module):
    """Pre-norm causal self-attention block: `[B, L, D] -> [B, L, D]`."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm = nn.RMSNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, l, d = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, l, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return x + self.out(y.transpose(1, 2).reshape(b, l, d))


class MambaLayer(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.block = MambaBlock(MambaConfig(d_model=d_model, n_layer=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, residual = self.block(x)
        return hidden + residual.to(hidden.dtype)


def fwd_bwd_ms(layer: nn.Module, batch: int, seqlen: int, d_model: int) -> tuple[float, float]:
    import triton.testing

    x = torch.randn(batch, seqlen, d_model, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn_like(x)

    def run():
        layer(x).backward(grad)

    run()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    run()
    peak = torch.cuda.max_memory_allocated() / 2**30
    ms = triton.testing.do_bench(run, warmup=25, rep=100, return_mode="median")
    return ms, peak


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4))
    for kind, marker in (("mamba", "o"), ("attention", "s")):
        pts = [r for r in rows if r["layer"] == kind and "ms" in r]
        ax_time.plot([r["seqlen"] for r in pts], [r["ms"] for r in pts], marker=marker, label=kind)
        ax_mem.plot([r["seqlen"] for r in pts], [r["peak GiB"] for r in pts], marker=marker, label=kind)
    for ax, label in ((ax_time, "fwd+bwd ms (fixed tokens per step)"), (ax_mem, "peak GiB")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--tokens", type=int, default=131072)
    parser.add_argument("--max-seqlen", type=int, default=131072)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    layers = {
        "mamba": MambaLayer(args.d_model).cuda().to(torch.bfloat16),
        "attention": AttentionBlock(args.d_model, args.d_model // 64).cuda().to(torch.bfloat16),
    }
    rows = []
    seqlen = 1024
    while seqlen <= args.max_seqlen:
        batch = max(1, args.tokens // seqlen)
        for kind, layer in layers.items():
            row = {"layer": kind, "seqlen": seqlen, "batch": batch}
            try:
                row["ms"], row["peak GiB"] = fwd_bwd_ms(layer, batch, seqlen, args.d_model)
                row["us/token"] = row["ms"] * 1000 / (batch * seqlen)
            except torch.OutOfMemoryError:
                row["error"] = "out of memory"
            torch.cuda.empty_cache()
            rows.append(row)
            print(row, flush=True)  # noqa: T201
        seqlen *= 2
    env = environment()
    png = RESULTS / f"scaling_{gpu_slug(env)}.png"
    RESULTS.mkdir(exist_ok=True)
    plot(rows, png)
    write_results("scaling", env, rows, ["layer", "seqlen", "batch", "ms", "us/token", "peak GiB", "error"],
                  notes=f"![scaling]({png.name})")  # fmt: skip


if __name__ == "__main__":
    main()
