"""The lm_pretrain recipe end to end on a tiny config: metrics, plots, export, resume, config errors."""

from __future__ import annotations

import json

import pytest
import torch

from recipes import lm_pretrain
from tasks.language.tokenizer import TextTokenizer
from tasks.lm import MambaLM
from tasks.runs import ConfigError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("MAMBALAB_CACHE", str(tmp_path / "cache"))


def test_tiny_run_writes_metrics_export_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    metrics = lm_pretrain.main(["--config", "tiny", f"run_dir={run_dir}", "data.extra_eval=[wikitext2_valid]"])
    for name in ("val", "wikitext2"):
        assert {f"{name}/loss", f"{name}/perplexity", f"{name}/bits_per_char"} <= metrics.keys()
        assert 0 < metrics[f"{name}/bits_per_char"] < 10
    assert metrics["steps"] == 6
    for item in ("config.yaml", "git_revision.txt", "metrics.csv", "metrics.json", "loss_curve.png"):
        assert (run_dir / item).is_file(), item
    assert json.loads((run_dir / "metrics.json").read_text())["val/bits_per_char"] == metrics["val/bits_per_char"]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()

    model = MambaLM.from_pretrained(run_dir / "model")
    tokenizer = TextTokenizer.from_file(run_dir / "model")
    assert model.config.vocab_size == tokenizer.vocab_size == 300

    resumed = lm_pretrain.main(
        ["--config", "tiny", f"run_dir={run_dir}", "ckpt_path=last", "trainer.max_steps=8", "data.extra_eval=[]"]
    )
    assert resumed["steps"] == 8


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="model.d_modl"):
        lm_pretrain.main(["--config", "tiny", f"run_dir={tmp_path}", "model.d_modl=8"])
    with pytest.raises(ValueError, match="not a named text dataset"):
        lm_pretrain.main(["--config", "tiny", f"run_dir={tmp_path}", "data.corpus=nope"])


def test_validation_interval_longer_than_an_epoch(tmp_path, data_dir):
    # 3,000 characters give ~8 training batches per epoch; validation every 10 steps must still happen.
    text = (data_dir / "text" / "tinyshakespeare.txt").read_text()[:3000]
    (tmp_path / "small.txt").write_text(text)
    metrics = lm_pretrain.main([
        "--config", "tiny", f"run_dir={tmp_path / 'run'}", f"data.files=[{tmp_path / 'small.txt'}]",
        "trainer.max_steps=12", "trainer.val_check_interval=10", "trainer.limit_val_batches=1",
    ])  # fmt: skip
    assert metrics["steps"] == 12 and "val/bits_per_char" in metrics
    assert "val/loss" in (tmp_path / "run" / "metrics.csv").read_text()


def test_ema_exports_the_averaged_weights_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    args = ["--config", "tiny", f"run_dir={run_dir}", "trainer.ema_decay=0.5"]
    metrics = lm_pretrain.main(args)
    best = torch.load(metrics["best_checkpoint"], weights_only=False)
    averaged = {k.removeprefix("model."): v for k, v in best["state_dict"].items() if k.startswith("model.")}
    raw = {k.removeprefix("model."): v for k, v in best["current_model_state"].items() if k.startswith("model.")}
    exported = MambaLM.from_pretrained(run_dir / "model").state_dict()
    assert exported.keys() == averaged.keys() == raw.keys()
    assert all(torch.equal(exported[k], averaged[k]) for k in exported)
    assert not all(torch.equal(exported[k], raw[k]) for k in exported)  # the average, not the raw weights

    resumed = lm_pretrain.main([*args, "ckpt_path=last", "trainer.max_steps=8"])
    assert resumed["steps"] == 8
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert int(last["averaging_state"]["n_averaged"]) == 8  # 6 updates restored, 2 more


def test_large_vocabulary_trains_through_the_fused_head(monkeypatch):
    # From FUSED_HEAD_MIN_VOCAB on, training_step scores hidden states with the fused head + cross-entropy: the same
    # loss and gradients as logits + cross-entropy.
    import torch

    from recipes import lm_pretrain

    torch.manual_seed(0)
    model_cfg = {"d_model": 32, "n_layer": 2, "d_state": 8, "dropout": 0.0}
    module = lm_pretrain.LMPretrainModule(model_cfg, {}, vocab_size=5000, evals={"val": 1.0}, max_steps=1)
    batch = {"input_ids": torch.randint(0, 5000, (2, 16)), "targets": torch.randint(0, 5000, (2, 16))}
    batch["targets"][0, :4] = -100
    losses, grads = [], []
    for threshold in (4096, 10**9):  # fused, then plain
        monkeypatch.setattr(lm_pretrain, "FUSED_HEAD_MIN_VOCAB", threshold)
        loss = module.training_step(batch, 0)
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, list(module.parameters())))
    torch.testing.assert_close(losses[0], losses[1])
    for fused, plain in zip(*grads):
        torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-6)
