"""Decoding speed of a 130M-shaped Mamba LM: ms per decode step and tokens/s, batch 1 and 64, CUDA graph on/off.

A random-initialized model of the published Mamba-130M shape (d_model 768, 24 layers, vocab 50277) in bf16; each
prompt of 128 tokens is pre-filled in one parallel pass, then 256 tokens are decoded greedily with the recurrent
state (`tasks.language.generation.generate`). Timed: the decode steps only (CUDA-synchronized wall clock), after a
warm-up call that also compiles and autotunes the kernels.

    python benchmarks/generation.py [--new-tokens 256] [--batches 1 64]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kernels  # noqa: E402
from backbone import MambaConfig  # noqa: E402
from benchmarks.report import environment, write_results  # noqa: E402
from tasks.language.generation import SamplingConfig, generate  # noqa: E402
from tasks.lm import MambaLM, MambaLMConfig  # noqa: E402

# mamba-ssm on an H100 (the anchors): batch-1 decode latency and batch-64 decode throughput.
ANCHORS = {1: ("0.77 ms/token", 0.77), 64: ("68k tok/s", 64 / 68_000 * 1e3)}


def measure(model: MambaLM, batch: int, prompt_len: int, new_tokens: int, cuda_graph: bool, repeats: int) -> dict:
    prompts = torch.randint(0, model.config.vocab_size, (batch, prompt_len)).tolist()
    greedy = SamplingConfig(temperature=0.0)
    generate(model, prompts, max_new_tokens=16, sampling=greedy, cuda_graph=cuda_graph)  # warm-up
    best = None
    for _ in range(repeats):
        result = generate(model, prompts, max_new_tokens=new_tokens, sampling=greedy, cuda_graph=cuda_graph)
        if best is None or result.decode_s < best.decode_s:
            best = result
    ms = best.decode_s / best.decode_steps * 1e3
    anchor_text, anchor_ms = ANCHORS.get(batch, ("", None))
    return {
        "batch": batch,
        "cuda_graph": "on" if cuda_graph else "off",
        "prefill_ms": best.prefill_s * 1e3,
        "ms_per_step": ms,
        "tokens_per_s": batch / ms * 1e3,
        "anchor": anchor_text,
        "vs_anchor": f"{anchor_ms / ms:.2f}x" if anchor_ms else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/generation.py needs a CUDA GPU")
    torch.manual_seed(0)
    config = MambaLMConfig(MambaConfig(d_model=768, n_layer=24), vocab_size=50277)
    model = MambaLM(config).cuda().to(torch.bfloat16).eval()
    rows = [
        measure(model, batch, args.prompt_len, args.new_tokens, graph, args.repeats)
        for batch in args.batches
        for graph in (True, False)
    ]
    env = environment() | {"kernels": kernels.kernel_backend("cuda"), "MAMBALAB_KERNELS": os.environ.get(
        "MAMBALAB_KERNELS", "auto")}  # fmt: skip
    notes = (
        f"Mamba-130M shape (d_model 768, 24 layers, vocab 50277), random init, bf16, greedy; prompt "
        f"{args.prompt_len} tokens pre-filled in parallel, then {args.new_tokens} decode steps timed (best of "
        f"{args.repeats}). Kernels: {env['kernels']}. vs_anchor > 1 means faster than the mamba-ssm anchor."
    )
    columns = ["batch", "cuda_graph", "prefill_ms", "ms_per_step", "tokens_per_s", "anchor", "vs_anchor"]
    write_results("generation", env, rows, columns, notes)


if __name__ == "__main__":
    main()
