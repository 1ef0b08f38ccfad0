"""The dna_pretrain recipe end to end on a tiny config: metrics, run directory, export, resume, eval, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from recipes import dna_pretrain
from tasks.genomics.catalog import UnknownGenomeError
from tasks.genomics.fasta import FastaError
from tasks.genomics.tokenizer import DNATokenizer
from tasks.genomics.windows import WindowError
from tasks.lm import MambaLM
from tasks.runs import ConfigError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("MAMBALAB_CACHE", str(tmp_path / "cache"))


def test_tiny_run_writes_metrics_export_resumes_and_evaluates(tmp_path):
    run_dir = tmp_path / "run"
    metrics = dna_pretrain.main(["--config", "tiny", f"run_dir={run_dir}", "data.eval_genomes=[human_mt]"])
    for prefix in ("val", "val_human_mt", "initial/val"):
        assert {f"{prefix}/loss", f"{prefix}/perplexity", f"{prefix}/bits_per_base"} <= metrics.keys()
    assert 0 < metrics["val/bits_per_base"] < metrics["initial/val/bits_per_base"]
    assert metrics["steps"] == 4
    for item in ("config.yaml", "git_revision.txt", "metrics.csv", "metrics.json", "loss_curve.png"):
        assert (run_dir / item).is_file(), item
    assert json.loads((run_dir / "metrics.json").read_text())["val/loss"] == metrics["val/loss"]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()

    # The export reloads for inference: likelihood of a sequence under the model.
    model = MambaLM.from_pretrained(run_dir / "model").eval()
    tok = DNATokenizer()
    ids = torch.from_numpy(
        tok.encode("GGGCGGCGACCTCGCGGGTTTTCGCTATTTATGAAAATTTTCCGGTTTAAGGCGTTTCCGTTCTTCTTCGTCATAACTTAA")
    )
    with torch.no_grad():
        logits = model(ids[None].long())
    assert logits.shape == (1, ids.shape[0], 16)

    resumed = dna_pretrain.main(["--config", "tiny", f"run_dir={run_dir}", "ckpt_path=last", "trainer.max_steps=6"])
    assert resumed["steps"] == 6 and "initial/val/loss" not in resumed

    scored = dna_pretrain.main(["--config", "tiny", f"run_dir={tmp_path / 'eval'}", "mode=eval",
                                f"init_from={run_dir / 'model'}", "data.eval_genomes=[orangutan_mt]"])  # fmt: skip
    assert {"val/bits_per_base", "val_orangutan_mt/bits_per_base"} <= scored.keys()


def test_bad_input_fails_clearly(tmp_path):
    run = f"run_dir={tmp_path / 'run'}"
    with pytest.raises(ConfigError, match="model.d_modl"):
        dna_pretrain.main(["--config", "tiny", run, "model.d_modl=8"])
    with pytest.raises(ConfigError, match="data.seq_len"):
        dna_pretrain.main(["--config", "tiny", run, "data.seq_len=long"])
    with pytest.raises(UnknownGenomeError, match="unknown genome 'ecoli'"):
        dna_pretrain.main(["--config", "tiny", run, "data.genome=ecoli"])
    with pytest.raises(WindowError, match="lambda_virus.fa.gz: a window of 60001 bases is longer than every record"):
        dna_pretrain.main(["--config", "tiny", run, "data.seq_len=60000"])
    empty = tmp_path / "empty.fa"
    empty.write_text("")
    with pytest.raises(FastaError, match="empty.fa: no FASTA records"):
        dna_pretrain.main(["--config", "tiny", run, "data.genome=mine", f"data.path={empty}"])
    gaps = tmp_path / "gaps.fa.gz"
    gaps.write_text(">scaffold_1\n" + "N" * 500 + "\n")
    with pytest.raises(FastaError, match="gaps.fa.gz: no valid bases"):
        dna_pretrain.main(["--config", "tiny", run, "data.genome=mine", f"data.path={gaps}"])
    broken = tmp_path / "broken.fa.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 40)
    with pytest.raises(FastaError, match="broken.fa.gz: unreadable gzip"):
        dna_pretrain.main(["--config", "tiny", run, "data.genome=mine", f"data.path={broken}"])
