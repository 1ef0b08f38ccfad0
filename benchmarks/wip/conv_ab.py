"""A/B: conv backward pass 2 on aligned tiles (working tree) vs HEAD's; then tiles per pass. GPU alone, CUDA graphs."""
import importlib.util, sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import torch
from benchmarks.kernels import bench_graph
from kernels.causal_conv1d import conv as new
spec = importlib.util.spec_from_file_location("conv_main", Path(__file__).with_name("conv_main.py"))
old = importlib.util.module_from_spec(spec); spec.loader.exec_module(old)

torch.manual_seed(0)
wins = []
for shape in ((8, 2048, 2048), (8, 1536, 2048)):
    b_, d, l = shape
    x = torch.randn(d, b_ * l, device="cuda", dtype=torch.bfloat16).unflatten(1, (b_, l)).transpose(0, 1).requires_grad_()
    w = (torch.randn(d, 4, device="cuda") / 4).requires_grad_()
    bias = torch.randn(d, device="cuda", requires_grad=True)
    dout = torch.randn_like(x)
    run = lambda m: torch.autograd.grad(m.causal_conv1d(x, w, bias, activation="silu"), (x, w, bias), dout)
    g_old, g_new = run(old), run(new)
    same = [torch.equal(a, c) for a, c in zip(g_old, g_new)]
    times = {"head": [], "aligned dx": []}
    for _ in range(2):
        times["head"].append(bench_graph(lambda: run(old)))
        times["aligned dx"].append(bench_graph(lambda: run(new)))
    for k, v in times.items():
        print(f"conv {shape} {k:10s} fwd+bwd us {' '.join(f'{t:.1f}' for t in v)} | grads equal to head {same}", flush=True)
    wins.append(min(times["aligned dx"]) <= min(times["head"]))
    base = {k: dict(v) for k, v in new.CONFIGS.items()}
    for kind, tiles in (("bwd_dx", [(16, 64, 2), (8, 128, 2), (16, 128, 4), (8, 256, 4), (32, 64, 4), (4, 256, 2)]),
                        ("bwd_dpre", [(16, 64, 2), (8, 128, 2), (16, 32, 1), (8, 64, 1), (32, 64, 4)])):
        for bd, bl, nw in tiles:
            new.CONFIGS[kind] = dict(BLOCK_D=bd, BLOCK_L=bl, num_warps=nw)
            us = bench_graph(lambda: run(new))
            print(f"conv {shape} tiles {kind} BLOCK_D={bd} BLOCK_L={bl} warps={nw}: {us:.1f} us", flush=True)
        new.CONFIGS.update({k: dict(v) for k, v in base.items()})
print("VERDICT", "aligned" if all(wins) else "head", flush=True)
