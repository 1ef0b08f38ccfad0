"""Data-parallel scaling of the 130M-shaped language model: tokens/s per GPU, speedup and peak memory per GPU.

Runs the real recipe, `python -m recipes.lm_pretrain --config 130m` (24 x 768, GPT-NeoX-20B vocabulary, 8 x 2048
tokens per GPU and step, bf16-mixed, 60 steps of which 10 warm up), once per setting, each in its own process:
one GPU, then N GPUs with DDP and with FSDP (one unit per residual block). Each run's `Throughput` callback measures
tokens/s and peak memory per GPU (`throughput.json` in its run directory). The speedup is N-GPU global tokens/s over
1-GPU tokens/s; the scaling efficiency is the speedup divided by N (the issue's target: 1.85x on 2 GPUs).

    python benchmarks/multi_gpu.py                         # 1 GPU, 2 x DDP, 2 x FSDP
    python benchmarks/multi_gpu.py --devices 4 --runs single,fsdp
    python benchmarks/multi_gpu.py -- trainer.max_steps=100     # extra recipe overrides after --

Writes benchmarks/results/multi_gpu_<gpu>.{json,md}; run directories go under runs/benchmarks/multi_gpu/<time>/.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import environment, write_results  # noqa: E402

RUNS = ("single", "ddp", "fsdp")
COLUMNS = ["run", "GPUs", "strategy", "tokens/s per GPU", "tokens/s", "speedup vs 1 GPU", "scaling efficiency",
           "peak GiB per GPU", "peak reserved GiB", "measured steps", "final train loss", "error"]  # fmt: skip


def run_recipe(name: str, devices: int, strategy: str, run_dir: Path, config: str, extra: list[str], timeout: int):
    """One `recipes.lm_pretrain` run in a subprocess; returns (return code, seconds, last lines of its output)."""
    command = [
        *(sys.executable, "-m", "recipes.lm_pretrain", "--config", config, f"run_dir={run_dir}"),
        *("trainer.accelerator=gpu", f"trainer.devices={devices}", f"trainer.strategy={strategy}", *extra),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("MAMBALAB_RUN_DIR", None)  # each run picks its own directory (Lightning's launcher shares it by rank)
    print(f"[{name}] {' '.join(command)}", flush=True)  # noqa: T201 - benchmark progress
    start = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        return 124, time.perf_counter() - start, f"timed out after {timeout} s\n{err.stderr or ''}"[-4000:]
    (run_dir / "benchmark_output.txt").write_text(result.stdout + "\n" + result.stderr)
    return result.returncode, time.perf_counter() - start, (result.stdout + result.stderr)[-4000:]


def final_train_loss(run_dir: Path) -> float | None:
    import csv

    path = run_dir / "metrics.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        losses = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    return losses[-1] if losses else None


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=2, help="GPUs of the multi-GPU runs (default 2)")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {','.join(RUNS)}")
    parser.add_argument("--config", default="130m", help="recipes/configs/lm_pretrain/<config>.yaml")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    parser.add_argument("--run-root", default=str(ROOT / "runs" / "benchmarks" / "multi_gpu"))
    args = parser.parse_args(argv)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = sorted(set(runs) - set(RUNS))
    if unknown:
        parser.error(f"--runs: unknown {unknown}; choose from {list(RUNS)}")
    available = torch.cuda.device_count()
    needed = max(1 if r == "single" else args.devices for r in runs)
    if available < needed:
        raise SystemExit(
            f"error: this benchmark needs {needed} CUDA GPUs (--devices {args.devices}, runs {runs}), but "
            f"{available} {'is' if available == 1 else 'are'} visible; nothing was measured"
        )

    root = Path(args.run_root) / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    rows, single_tps = [], None
    for name in runs:
        devices, strategy = (1, "auto") if name == "single" else (args.devices, name)
        run_dir = root / name
        run_dir.mkdir(parents=True, exist_ok=True)
        rc, seconds, tail = run_recipe(name, devices, strategy, run_dir, args.config, extra, args.timeout)
        row = {"run": name, "GPUs": devices, "strategy": "single device" if name == "single" else strategy,
               "wall seconds": round(seconds, 1), "run_dir": str(run_dir)}  # fmt: skip
        measured = run_dir / "throughput.json"
        if measured.is_file():
            t = json.loads(measured.read_text())
            measures = {
                "tokens/s per GPU": t["throughput/tokens_per_s_per_device"],
                "tokens/s": t["throughput/tokens_per_s"],
                "peak GiB per GPU": t.get("throughput/peak_allocated_gib"),
                "peak GiB per rank": t.get("throughput/peak_allocated_gib_per_rank"),
                "peak reserved GiB": t.get("throughput/peak_reserved_gib"),
                "measured steps": t["throughput/steps"],
                "final train loss": final_train_loss(run_dir),
            }
            row |= {k: v for k, v in measures.items() if v is not None}
            if name == "single":
                single_tps = t["throughput/tokens_per_s"]
            elif single_tps:
                speedup = t["throughput/tokens_per_s"] / single_tps
                row |= {"speedup vs 1 GPU": f"{speedup:.2f}x", "scaling efficiency": f"{speedup / devices:.1%}"}
        if rc != 0:
            row["error"] = f"exit {rc}: " + (tail.strip().splitlines() or [""])[-1][:160]
            print(f"[{name}] FAILED (exit {rc}); last output:\n{tail}", flush=True)  # noqa: T201
        rows.append(row)
        print(f"[{name}] {json.dumps(row)}", flush=True)  # noqa: T201

    notes = (
        f"`python benchmarks/multi_gpu.py --devices {args.devices} --runs {','.join(runs)}"
        + (f" -- {' '.join(extra)}" if extra else "")
        + f"`: `recipes.lm_pretrain --config {args.config}` (130M shape: 24 x 768, vocab 50,277, 8 x 2048 tokens per "
        "GPU and step, bf16-mixed, AdamW, gradient clipping 1.0), one process per GPU. Tokens/s are measured by "
        "`tasks.distributed.Throughput` from step 10 to the end of training, leaving out validation and checkpoint "
        "writes; global tokens/s = all ranks' tokens / the slowest rank's time. Speedup = global tokens/s over the "
        "1-GPU run's; scaling efficiency = speedup / GPUs (target: 1.85x on 2 GPUs). Peak GiB per GPU: "
        "`torch.cuda.max_memory_allocated` over the measured steps, the largest rank's (per rank in the JSON)."
    )
    env = environment() | {"gpus_visible": available}
    write_results("multi_gpu", env, rows, COLUMNS, notes)
    if any("error" in row for row in rows):
        raise SystemExit("error: at least one run failed (see the table and its run directory)")


if __name__ == "__main__":
    main()
