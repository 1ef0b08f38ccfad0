"""A real 2-process DDP run (gloo, CPU) of dna_pretrain matches one process with the same global batch."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed

ROOT = Path(__file__).resolve().parents[2]


def _train_losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def _run(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    # The real CLI: Lightning's DDP launcher re-runs this same command for rank 1.
    command = [
        *(sys.executable, "-m", "recipes.dna_pretrain", "--config", "tiny", f"run_dir={run_dir}"),
        *("trainer.accelerator=cpu", "trainer.max_steps=4", "trainer.val_check_interval=4", *overrides),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("MAMBALAB_RUN_DIR", None)
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs the gloo backend")
def test_two_process_ddp_matches_single_process(tmp_path):
    _run(tmp_path / "single", "trainer.devices=1", "data.batch_size=8")
    _run(tmp_path / "ddp", "trainer.devices=2", "trainer.strategy=ddp", "data.batch_size=4")
    single, ddp = _train_losses(tmp_path / "single"), _train_losses(tmp_path / "ddp")
    assert sorted(single) == sorted(ddp) and len(single) >= 4
    for step in single:
        assert abs(single[step] - ddp[step]) <= 1e-4 * abs(single[step]), (step, single[step], ddp[step])
    # Written once, by rank 0, into the one run directory; the checkpoint loads in a single process.
    assert (tmp_path / "ddp" / "metrics.json").is_file()
    assert (tmp_path / "ddp" / "checkpoints" / "last.ckpt").is_file()
    assert not any(p.name != "ddp" for p in tmp_path.iterdir() if p.name not in {"single", "ddp"})
    _run(tmp_path / "ddp", "trainer.devices=1", "ckpt_path=last", "trainer.max_steps=6", "data.batch_size=8")
    assert max(_train_losses(tmp_path / "ddp")) >= 5
