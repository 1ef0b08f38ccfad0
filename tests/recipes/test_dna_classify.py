"""The dna_classify recipe end to end: GUE from scratch and from a pretrained model, species windows, bad input."""

from __future__ import annotations

import pytest

from recipes import dna_classify, dna_pretrain
from tasks.genomics.catalog import UnknownGenomeError
from tasks.runs import ConfigError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("MAMBALAB_CACHE", str(tmp_path / "cache"))


def test_gue_scratch_and_pretrained(tmp_path):
    run_dir = tmp_path / "scratch"
    metrics = dna_classify.main(["--config", "tiny", f"run_dir={run_dir}"])
    for prefix in ("test", "baseline/test"):
        assert {f"{prefix}/accuracy", f"{prefix}/mcc", f"{prefix}/f1", f"{prefix}/roc_auc"} <= metrics.keys()
    for item in ("metrics.json", "confusion_matrix.png", "loss_curve.png", "config.yaml"):
        assert (run_dir / item).is_file(), item

    dna_pretrain.main(["--config", "tiny", f"run_dir={tmp_path / 'pre'}", "trainer.max_steps=2"])
    pretrained = tmp_path / "pre" / "model"
    tuned = dna_classify.main(["--config", "tiny", f"run_dir={tmp_path / 'tuned'}", "baseline.enabled=false",
                               f"model.init_from={pretrained}", "model.direction=bidirectional"])  # fmt: skip
    assert tuned["init"].endswith("model") and "baseline/test/mcc" not in tuned
    assert 0 <= tuned["test/accuracy"] <= 1


def test_species_classification_with_rc_invariance(tmp_path):
    metrics = dna_classify.main([
        "--config", "tiny", f"run_dir={tmp_path / 'species'}", "data.task=species",
        "data.genomes=[human_mt,orangutan_mt,lambda_phage]", "data.seq_len=64", "data.block_size=2000",
        "data.train_samples=64", "data.max_eval_windows=6", "model.rc_invariant=true",
    ])  # fmt: skip
    assert metrics["task"] == "species:human_mt,orangutan_mt,lambda_phage"
    assert 0 <= metrics["test/roc_auc"] <= 1 and 0 <= metrics["baseline/test/accuracy"] <= 1


def test_bad_input(tmp_path):
    run = f"run_dir={tmp_path / 'run'}"
    with pytest.raises(ConfigError, match="model.poolng"):
        dna_classify.main(["--config", "tiny", run, "model.poolng=mean"])
    with pytest.raises(ConfigError, match="data.task"):
        dna_classify.main(["--config", "tiny", run, "data.task=regression"])
    with pytest.raises(UnknownGenomeError, match="unknown genome 'gorilla'"):
        dna_classify.main(["--config", "tiny", run, "data.task=species", "data.genomes=[human_mt,gorilla]"])
    with pytest.raises(FileNotFoundError, match="GUE task 'tf/7'"):
        dna_classify.main(["--config", "tiny", run, "data.gue_task=tf/7"])
