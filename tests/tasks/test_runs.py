"""Recipe plumbing: config loading names bad keys; run directories record config and revision; weight EMA."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from tasks.runs import (
    ConfigError,
    TrainerConfig,
    WeightEMA,
    build_trainer,
    load_config,
    plot_metric_curves,
    prepare_run_dir,
)


@dataclass
class Schema:
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    lr: float = 1e-3


@pytest.fixture
def config_dir(tmp_path):
    (tmp_path / "default.yaml").write_text("trainer:\n  max_steps: 5\n")
    (tmp_path / "typo.yaml").write_text("trainer:\n  max_step: 5\n")
    return tmp_path


def test_yaml_then_overrides(config_dir):
    cfg = load_config(Schema, config_dir, ["lr=0.5", "trainer.precision=bf16-mixed"], "job")
    assert cfg.trainer.max_steps == 5 and cfg.lr == 0.5 and cfg.trainer.precision == "bf16-mixed"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--config", "typo"], r"typo.yaml: invalid config key 'trainer.max_step'"),
        (["trainer.max_stepz=3"], r"command line: invalid config key 'trainer.max_stepz'"),
        (["lr=abc"], r"invalid config key 'lr'"),
        (["--config", "nope"], r"config 'nope' not found"),
        (["--bogus"], r"unrecognized argument '--bogus'"),
    ],
)
def test_bad_config_names_source_and_key(config_dir, argv, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Schema, config_dir, argv, "job")


def test_run_dir_records_config_and_revision(tmp_path):
    run_dir = prepare_run_dir(Schema(), str(tmp_path / "run"), "job")
    assert "max_steps" in (run_dir / "config.yaml").read_text()
    assert (run_dir / "git_revision.txt").read_text().strip()


def test_each_run_gets_its_own_directory(tmp_path):
    first = prepare_run_dir(Schema(), None, "job", root=str(tmp_path))
    second = prepare_run_dir(Schema(), None, "job", root=str(tmp_path))
    assert first != second and first.parent == second.parent


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="last.ckpt"):
        prepare_run_dir(Schema(), None, "job", resume=True, root=str(tmp_path))


def test_loss_curve_plot(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text("step,train/loss,val/loss\n0,2.0,\n1,1.5,\n1,,1.6\n")
    assert plot_metric_curves(csv_path, ("train/loss", "val/loss"), tmp_path / "curve.png").stat().st_size > 1000


def test_warmup_cosine_schedule_endpoints():
    from tasks.runs import warmup_cosine

    assert warmup_cosine(0, warmup=10, total=100, floor=0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, warmup=10, total=100, floor=0.1) == pytest.approx(1.0)
    assert warmup_cosine(10, warmup=10, total=100, floor=0.1) == pytest.approx(1.0)
    assert warmup_cosine(100, warmup=10, total=100, floor=0.1) == pytest.approx(0.1)
    assert warmup_cosine(500, warmup=10, total=100, floor=0.1) == pytest.approx(0.1)


class _Linear(pl.LightningModule):
    """A linear regression whose validation records the weights it ran with."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.validated_with: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        if batch_idx == 0:
            self.validated_with.append(self.layer.weight.detach().clone())
        self.log("val/loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _RecordWeights(pl.Callback):
    def __init__(self) -> None:
        self.weights: dict[int, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.weights[trainer.global_step] = pl_module.layer.weight.detach().clone()


def _loaders():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(16, 4, generator=generator)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.3 * torch.randn(16, 1, generator=generator)
    loader = DataLoader(TensorDataset(x, y), batch_size=4, shuffle=False)  # 4 steps per epoch
    return loader, loader


def _ema_trainer(run_dir, max_steps: int, decay: float = 0.8, **overrides):
    cfg = TrainerConfig(
        max_steps=max_steps, val_check_interval=4, accelerator="cpu", devices=1, enable_progress_bar=False,
        log_every_n_steps=1, ema_decay=decay, **overrides,
    )  # fmt: skip
    record = _RecordWeights()
    return build_trainer(cfg, run_dir, extra_callbacks=[record]), record


def _expected_ema(ema: WeightEMA, weights: dict[int, torch.Tensor], last: int) -> torch.Tensor:
    average = weights[1]  # the first update copies
    for step in range(2, last + 1):
        decay = ema.decay_at(step)
        average = decay * average + (1 - decay) * weights[step]
    return average


def test_weight_ema_validates_checkpoints_and_ends_with_the_average(tmp_path):
    trainer, record = _ema_trainer(tmp_path, max_steps=8)
    ema = next(cb for cb in trainer.callbacks if isinstance(cb, WeightEMA))
    module = _Linear()
    trainer.fit(module, *_loaders())
    expected = {step: _expected_ema(ema, record.weights, step) for step in (4, 8)}
    assert not torch.allclose(expected[8], record.weights[8])  # the average is not the last weights
    # Validation ran on the average; after fit the module holds it.
    assert len(module.validated_with) == 2
    assert torch.allclose(module.validated_with[0], expected[4])
    assert torch.allclose(module.validated_with[1], expected[8])
    assert torch.allclose(module.layer.weight, expected[8])
    # Checkpoints: state_dict is the average, current_model_state the raw weights.
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert torch.allclose(last["state_dict"]["layer.weight"], expected[8])
    assert torch.allclose(last["current_model_state"]["layer.weight"], record.weights[8])
    # A validate after fit scores the best checkpoint's average and leaves it in the module.
    best = trainer.checkpoint_callback.best_model_path
    best_step = int(best.rsplit("best-", 1)[1].removesuffix(".ckpt"))
    trainer.validate(module, _loaders()[1], ckpt_path=best, verbose=False)
    assert torch.allclose(module.validated_with[-1], expected[best_step])
    assert torch.allclose(module.layer.weight, expected[best_step])


def test_weight_ema_resumes_the_same_average(tmp_path):
    straight, record = _ema_trainer(tmp_path / "straight", max_steps=8)
    torch.manual_seed(0)
    reference = _Linear()
    straight.fit(reference, *_loaders())

    first, _ = _ema_trainer(tmp_path / "resumed", max_steps=4)
    torch.manual_seed(0)
    module = _Linear()
    first.fit(module, *_loaders())
    second, _ = _ema_trainer(tmp_path / "resumed", max_steps=8)
    torch.manual_seed(0)
    module = _Linear()
    second.fit(module, *_loaders(), ckpt_path=str(tmp_path / "resumed" / "checkpoints" / "last.ckpt"))
    assert torch.allclose(module.layer.weight, reference.layer.weight)
    last = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert torch.allclose(last["current_model_state"]["layer.weight"], record.weights[8])
    assert int(last["averaging_state"]["n_averaged"]) == 8


def test_weight_ema_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer.ema_decay must be in \(0, 1\)"):
        build_trainer(TrainerConfig(ema_decay=1.0, accelerator="cpu"), tmp_path)
    with pytest.raises(ConfigError, match="trainer.ema_decay .* sharded strategy 'fsdp'"):
        build_trainer(TrainerConfig(ema_decay=0.99, strategy="fsdp", accelerator="cpu"), tmp_path)


@pytest.mark.gpu
def test_weight_ema_update_does_not_wait_for_the_gpu():
    from torch.optim.swa_utils import get_ema_multi_avg_fn

    from tasks.runs import _AveragedModel

    module = torch.nn.Linear(8, 8).cuda()
    average = _AveragedModel(module, torch.device("cuda"), get_ema_multi_avg_fn(0.9))
    average.update_parameters(module)  # the first update copies
    torch.cuda.set_sync_debug_mode("error")
    try:
        average.update_parameters(module)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert int(average.n_averaged) == 2
