"""Kernels in one decode step of a 130M-shaped LM (bf16, random init, batch 1 and 64): every kernel's name, count per
step and mean GPU time, from the torch profiler over 5 eager `model.step` calls (a CUDA graph replays the same
kernels). `kernels/NOTES.md` ("Decode step") quotes it.

    python benchmarks/profile_decode_step.py

Under programmatic dependent launch (Hopper; `kernels._triton_utils.pdl`) a kernel starts before the one ahead of it
ends, so its profiled time includes that wait and the per-kernel times overlap; `MAMBALAB_PDL=0` gives the times of
kernels that run one after another.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backbone import MambaConfig  # noqa: E402
from tasks.lm import MambaLM, MambaLMConfig  # noqa: E402

STEPS = 5


def main() -> None:
    torch.manual_seed(0)
    config = MambaLMConfig(MambaConfig(d_model=768, n_layer=24), vocab_size=50277)
    model = MambaLM(config).cuda().to(torch.bfloat16).eval()
    for batch in (1, 64):
        cache = model.allocate_cache(batch)
        tokens = torch.randint(0, config.vocab_size, (batch,), device="cuda")
        with torch.no_grad():
            for _ in range(3):  # compile and warm up
                model.step(tokens, cache)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(STEPS):
                    model.step(tokens, cache)
                torch.cuda.synchronize()
        stats: dict[str, list[float]] = {}
        for event in prof.events():
            if event.device_type.name == "CUDA":
                count_time = stats.setdefault(event.name[:90], [0, 0.0])
                count_time[0] += 1
                count_time[1] += event.device_time
        kernels = sum(n for n, _ in stats.values()) / STEPS
        gpu_us = sum(t for _, t in stats.values()) / STEPS
        print(f"batch {batch}: {kernels:.0f} kernels per step, {gpu_us:.0f} us GPU time per step")
        for name, (n, t) in sorted(stats.items(), key=lambda kv: -kv[1][1]):
            print(f"  {n / STEPS:6.1f} x {t / n:7.2f} us  {name}")


if __name__ == "__main__":
    main()
