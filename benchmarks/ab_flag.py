"""A/B of a module-level switch, alternated in one process on one GPU: the selective scan alone and the 370M
CUDA-graph training step, each value in turn, round after round, so that clocks and machine drift hit both alike.

    python benchmarks/ab_flag.py kernels.selective_scan.scan.DBC_SCATTER True False
    python benchmarks/ab_flag.py kernels.selective_scan.scan.DBC_SCATTER True False --parts step --rounds 2

- `scan`: scan fwd and fwd+bwd GPU time alone (`bench_graph`, a replayed CUDA graph) at the 370M and 130M layer shapes,
  after the gradients under each value are compared with those under the first (relative norm of the difference).
- `step`: `train_throughput.time_steps` of the 370M model (fused head, CUDA graph, 20 timed steps), with the SM clock
  and power they ran at.

Values are Python literals (`True`, `"atomics"`, `8`). The switch is set on the module between calls, so it must be
one the launchers read at each call (the kernels' constexpr switches are).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCAN_SHAPES = ((8, 2048, 2048, 16), (8, 1536, 2048, 16))  # (batch, d_inner, seqlen, dstate) of a 370M and a 130M layer


def resolve(path: str):
    """'package.module.NAME' -> (module, 'NAME'), checking the attribute exists (a typo would otherwise A/B nothing)."""
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ValueError(f"{path!r}: give the switch as module.path.NAME")
    module = importlib.import_module(module_name)
    if not hasattr(module, attr):
        raise AttributeError(f"{module_name} has no attribute {attr!r} to switch")
    return module, attr


def parse_values(texts: list[str]) -> list:
    """Python literals; at least two, all different."""
    values = [ast.literal_eval(t) for t in texts]
    if len(values) < 2 or len({repr(v) for v in values}) < len(values):
        raise ValueError(f"need at least two different values to compare, got {values}")
    return values


def scan_ab(module, attr, values, rounds):
    for shape in SCAN_SHAPES:
        scan_ab_shape(shape, module, attr, values, rounds)


def scan_ab_shape(shape, module, attr, values, rounds):
    import torch

    from benchmarks.kernels import bench_graph, scan_inputs
    from kernels.selective_scan import scan

    torch.manual_seed(0)
    inputs = scan_inputs(*shape)
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    dout = torch.randn_like(inputs["u"])

    def fwd():
        return scan.selective_scan(**leaves, delta_softplus=True)

    def both():
        return torch.autograd.grad(fwd(), list(leaves.values()), dout)

    grads = []
    for value in values:
        setattr(module, attr, value)
        grads.append(both())
    for value, other in zip(values[1:], grads[1:]):
        diffs = ", ".join(
            f"d{name} {((a.float() - b.float()).norm() / a.float().norm().clamp_min(1e-30)).item():.1e}"
            for name, a, b in zip(leaves, grads[0], other)
        )
        print(f"grads {shape} {attr}={value!r} vs {values[0]!r}, relative norm of the difference: {diffs}")
    for rnd in range(rounds):
        for value in values:
            setattr(module, attr, value)
            with torch.no_grad():
                f = bench_graph(fwd)
            fb = bench_graph(both)
            print(f"scan {shape} {attr}={value!r} round {rnd}: fwd {f:.1f} us, fwd+bwd {fb:.1f} us, "
                  f"bwd {fb - f:.1f} us", flush=True)  # fmt: skip


def step_ab(module, attr, values, rounds):
    import torch

    import benchmarks.train_throughput as tt

    for rnd in range(rounds):
        for value in values:
            setattr(module, attr, value)
            torch.manual_seed(0)
            model = tt.build("370M")
            ms, peak, clocks = tt.time_steps(
                model, 8, 2048, steps=20, warmup=3, backend="triton", fused_loss=True, cuda_graph=True
            )
            print(f"step 370M {attr}={value!r} round {rnd}: {ms:.2f} ms = {8 * 2048 / ms:.2f}k tokens/s, "
                  f"{peak:.1f} GiB, {clocks}", flush=True)  # fmt: skip
            del model
            torch.cuda.empty_cache()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("switch", help="module.path.NAME of the switch, e.g. kernels.selective_scan.scan.DBC_SCATTER")
    parser.add_argument("values", nargs="+", help="its values as Python literals; the first is the baseline")
    parser.add_argument("--parts", default="scan,step", help="comma-separated: scan, step (default both)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the scan timings (default 3)")
    parser.add_argument("--step-rounds", type=int, default=3, help="rounds of the 370M steps (default 3)")
    args = parser.parse_args(argv)
    module, attr = resolve(args.switch)
    values = parse_values(args.values)
    parts = set(args.parts.split(","))
    if parts - {"scan", "step"}:
        parser.error(f"unknown --parts {sorted(parts - {'scan', 'step'})}: choose from scan, step")
    initial = getattr(module, attr)
    try:
        if "scan" in parts:
            scan_ab(module, attr, values, args.rounds)
        if "step" in parts:
            step_ab(module, attr, values, args.step_rounds)
    finally:
        setattr(module, attr, initial)


if __name__ == "__main__":
    main()
