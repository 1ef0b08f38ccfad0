"""A real 2-process DDP run (gloo, CPU) of lm_pretrain: one run directory, written once, and validation metrics that
score every window exactly once, as one process scoring the exported weights does (also with weight EMA on, whose
averaged weights must be what was validated and exported)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed

from tasks.language.data import PackedTokenDataset, load_corpus, tokenize_cached
from tasks.language.metrics import token_nll
from tasks.language.tokenizer import TextTokenizer
from tasks.lm import MambaLM

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs the gloo backend")
@pytest.mark.parametrize("extra", [[], ["trainer.ema_decay=0.5"]], ids=["plain", "ema"])
def test_two_process_validation_scores_every_window_once(tmp_path, data_dir, extra):
    corpus = tmp_path / "small.txt"  # its last 10% gives 9 validation windows: 2 ranks need one blank
    corpus.write_text((data_dir / "text" / "tinyshakespeare.txt").read_text()[:4000])
    run_dir = tmp_path / "ddp"
    command = [
        *(sys.executable, "-m", "recipes.lm_pretrain", "--config", "tiny", f"run_dir={run_dir}"),
        *(f"data.files=[{corpus}]", "data.eval_batch_size=2", "trainer.accelerator=cpu", "trainer.devices=2"),
        *("trainer.strategy=ddp", "trainer.max_steps=4", "trainer.val_check_interval=4"),
        *("trainer.limit_val_batches=1.0", "trainer.throughput_warmup_steps=2", *extra),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MAMBALAB_CACHE": str(tmp_path / "cache")}
    env.pop("MAMBALAB_RUN_DIR", None)
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "ddp", "small.txt"]

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["throughput/devices"] == 2 and metrics["throughput/tokens_per_s"] > 0
    assert json.loads((run_dir / "throughput.json").read_text())["throughput/steps"] == 2

    tokenizer = TextTokenizer.from_file(run_dir / "model")
    val = tokenize_cached("val", load_corpus([corpus], 0.1, None)[1], tokenizer, tmp_path / "check")
    windows = PackedTokenDataset(val.tokens, 32, tokenizer.eos_id, tokenizer.pad_id)
    assert len(windows) % 2 == 1
    model = MambaLM.from_pretrained(run_dir / "model").eval()
    nats = count = 0
    with torch.no_grad():
        for item in windows:
            n, c = token_nll(model(item["input_ids"][None]), item["targets"][None])
            nats, count = nats + float(n), count + int(c)
    assert metrics["val/loss"] == pytest.approx(nats / count, rel=1e-5)
