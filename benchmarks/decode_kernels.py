"""The decode-step kernels alone, each call timed in a CUDA graph (`triton.testing.do_bench_cudagraph`), in one run:

* `kernels.mixer_step` (130M shape: dim 1536, dstate 16, dt_rank 48) at batch 1 and 64, with the default channel
  blocks and the variants `kernels/NOTES.md` compares;
* the decode GEMV (`decode_linear`, `decode_rms_norm_linear`) against cuBLAS (and the norm kernel + cuBLAS) for the
  130M in_proj and out_proj at a few rows, whatever `MAX_ROWS` says, to place the crossover.

    python benchmarks/decode_kernels.py [--rows 1 2 4 8]

The numbers in `kernels/NOTES.md` ("Decode step") came from this code run as a scratch copy on an H100; it was
committed after the session's device time was spent, so this file itself has not run on a GPU yet.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "kernels")]

from mixer_step_inputs import make_step_inputs  # noqa: E402

from kernels.decode_linear import gemv  # noqa: E402
from kernels.mixer_step import fused as mixer_step_fused  # noqa: E402
from kernels.rms_norm import fused as norm  # noqa: E402


def cuda_graph_us(fn) -> float:
    return triton.testing.do_bench_cudagraph(fn, rep=200) * 1e3


def time_mixer_step(inputs: dict) -> float:
    return cuda_graph_us(lambda: mixer_step_fused.mixer_step(**inputs))


def bench_mixer_step() -> None:
    default = mixer_step_fused.channel_blocks
    for batch in (1, 64):
        inputs = make_step_inputs(batch, 1536, 16, 48, 4, 4, torch.bfloat16, device="cuda")
        for blocks in [None, (64, 64), (64, 128), (128, 128), (64, 256)]:
            mixer_step_fused.channel_blocks = default if blocks is None else (lambda dim, b, blocks=blocks: blocks)
            print(f"mixer_step b{batch} blocks {blocks or default(1536, batch)}: {time_mixer_step(inputs):.2f} us")
        mixer_step_fused.channel_blocks = default


def time_linears(x, w, residual, norm_weight, gemv_rows: int) -> tuple[float, float, float, float]:
    """(GEMV, cuBLAS, norm + GEMV, norm kernel + cuBLAS) in us; the GEMV timed with MAX_ROWS = gemv_rows."""
    max_rows, gemv.MAX_ROWS = gemv.MAX_ROWS, gemv_rows
    try:
        linear = cuda_graph_us(lambda: gemv.decode_linear(x, w))
        norm_linear = cuda_graph_us(
            lambda: gemv.decode_rms_norm_linear(x, norm_weight, w, None, residual, residual_in_fp32=True)
        )
    finally:
        gemv.MAX_ROWS = max_rows
    cublas = cuda_graph_us(lambda: F.linear(x, w))
    normed = lambda: norm.rms_norm(x, norm_weight, None, residual, prenorm=True, residual_in_fp32=True)[0]  # noqa: E731
    norm_cublas = cuda_graph_us(lambda: F.linear(normed(), w))
    return linear, cublas, norm_linear, norm_cublas


def bench_decode_linears(rows_list: list[int]) -> None:
    for rows in rows_list:
        for K, N in ((768, 3072), (1536, 768)):
            x = torch.randn(rows, K, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
            residual, norm_weight = torch.randn(rows, K, device="cuda"), torch.ones(K, device="cuda")
            a, b, c, d = time_linears(x, w, residual, norm_weight, gemv_rows=max(rows_list))
            print(
                f"rows {rows} K {K} N {N}: gemv {a:.2f} us, cuBLAS {b:.2f} us | "
                f"norm+gemv {c:.2f} us, norm kernel + cuBLAS {d:.2f} us"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()
    print(torch.cuda.get_device_name(), f"torch {torch.__version__}, triton {triton.__version__}")
    bench_mixer_step()
    bench_decode_linears(args.rows)


if __name__ == "__main__":
    main()
