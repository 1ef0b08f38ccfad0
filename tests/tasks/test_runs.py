"""Recipe plumbing: config loading names bad keys; run directories record config and revision."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tasks.runs import ConfigError, TrainerConfig, load_config, plot_metric_curves, prepare_run_dir


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
