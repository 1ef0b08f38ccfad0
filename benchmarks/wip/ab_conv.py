"""Session 14 A/B, GPU only (drop at the merge): the conv as on main ("head", loaded from `git show main:...`) against
this branch's lane-shift kernels with the two-pass backward ("lanes") and the one-pass backward ("one-pass").

    python benchmarks/wip/ab_conv.py conv              # fwd and fwd+bwd GPU time alone, gradients against head
    python benchmarks/wip/ab_conv.py tiles             # the one-pass backward's tile at (8, 2048, 2048)
    python benchmarks/wip/ab_conv.py step SECONDS VARIANTS ROUNDS   # 370M CUDA-graph training steps, alternating
"""

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import torch  # noqa: E402

from benchmarks.kernels import bench_graph  # noqa: E402
from kernels.causal_conv1d import conv as new  # noqa: E402

T0 = time.time()
SHAPES = ((8, 2048, 2048), (8, 1536, 2048), (1, 1536, 65536))


def load_head():
    """main's conv module: from $CONV_HEAD (a file written beforehand with `git show main:...`) when set, else git."""
    if os.environ.get("CONV_HEAD"):
        path = Path(os.environ["CONV_HEAD"])
    else:
        source = subprocess.run(["git", "show", "main:kernels/causal_conv1d/conv.py"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout  # fmt: skip
        path = Path(tempfile.mkdtemp()) / "conv_head.py"
        path.write_text(source)
    spec = importlib.util.spec_from_file_location("conv_head", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HEAD = load_head()
LAUNCHERS = (new._causal_conv1d_fwd, new._causal_conv1d_bwd)


def use(variant):
    """Route `kernels.causal_conv1d` (and so the model) through one variant."""
    if variant == "head":
        new._causal_conv1d_fwd, new._causal_conv1d_bwd = HEAD._causal_conv1d_fwd, HEAD._causal_conv1d_bwd
    else:
        new._causal_conv1d_fwd, new._causal_conv1d_bwd = LAUNCHERS
        new.ONE_PASS_BACKWARD = variant == "one-pass"


def inputs(b, d, l):
    torch.manual_seed(0)
    # The mixer's layout: a channel-major [D, B L] matrix viewed as (B, D, L).
    x = torch.randn(d, b * l, device="cuda", dtype=torch.bfloat16).unflatten(1, (b, l)).transpose(0, 1)
    w = (torch.randn(d, 4, device="cuda") / 4).requires_grad_()
    bias = torch.randn(d, device="cuda", requires_grad=True)
    return x.requires_grad_(), w, bias, torch.randn_like(x)


def conv_ab():
    for shape in SHAPES:
        conv_ab_shape(shape, *inputs(*shape))
    use("one-pass")


def conv_ab_shape(shape, x, w, bias, dout):
    def fwd():
        return new.causal_conv1d(x, w, bias, activation="silu")

    def both():
        return torch.autograd.grad(fwd(), (x, w, bias), dout)

    results = {}
    for v in ("head", "lanes", "one-pass"):
        use(v)
        with torch.no_grad():
            out = fwd()
        results[v] = (out, *both())
    for v in ("lanes", "one-pass"):
        diffs = [f"{(a.float() - c.float()).abs().max().item():.2e}" for a, c in zip(results["head"], results[v])]
        print(f"conv {shape} {v} vs head, max abs diff out, dx, dw, dbias: {diffs}", flush=True)
    for rnd in range(2):
        for v in ("head", "lanes", "one-pass"):
            use(v)
            with torch.no_grad():
                f = bench_graph(fwd)
            fb = bench_graph(both)
            print(f"AB conv {shape} {v:9s} round {rnd}: fwd {f:.1f} us, fwd+bwd {fb:.1f} us", flush=True)


def tiles():
    use("one-pass")
    x, w, bias, dout = inputs(8, 2048, 2048)
    base = dict(new.CONFIGS["bwd"])
    for bd, bl, nw in [(8, 128, 4), (8, 256, 4), (4, 256, 2), (16, 128, 4), (8, 128, 2), (4, 512, 4), (8, 64, 1),
                       (16, 64, 2), (4, 128, 1), (16, 256, 8)]:  # fmt: skip
        new.CONFIGS["bwd"] = dict(BLOCK_D=bd, BLOCK_L=bl, num_warps=nw)
        us = bench_graph(lambda: torch.autograd.grad(new.causal_conv1d(x, w, bias, activation="silu"), (x, w, bias),
                                                     dout))  # fmt: skip
        print(f"tiles bwd (8, 2048, 2048) BLOCK_D={bd} BLOCK_L={bl} warps={nw}: fwd+bwd {us:.1f} us", flush=True)
    new.CONFIGS["bwd"] = base


def steps(seconds, variants, rounds):
    import train_throughput as tt

    for rnd in range(rounds):
        for v in variants:
            if time.time() - T0 > seconds:
                return
            use(v)
            torch.manual_seed(0)
            model = tt.build("370M")
            ms, peak = tt.time_steps(model, 8, 2048, steps=20, warmup=3, backend="triton", fused_loss=True,
                                     cuda_graph=True)  # fmt: skip
            print(f"AB step 370M {v:9s} round {rnd}: {ms:.2f} ms = {8 * 2048 / ms:.2f}k tok/s, {peak:.1f} GiB",
                  flush=True)  # fmt: skip
            del model
            torch.cuda.empty_cache()


if __name__ == "__main__":
    part = sys.argv[1]
    if part == "conv":
        conv_ab()
    elif part == "tiles":
        tiles()
    else:
        steps(float(sys.argv[2]), sys.argv[3].split(","), int(sys.argv[4]))
