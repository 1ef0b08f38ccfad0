"""Recipe plumbing shared by every job: typed configs, run directories, the Lightning Trainer, plots.

A run directory holds everything about one run::

    runs/<job>/<timestamp>/
        config.yaml         the resolved config (YAML + CLI overrides)
        git_revision.txt    the code that ran
        metrics.csv         every logged metric (Lightning CSVLogger)
        checkpoints/        last.ckpt + the best checkpoint by the monitored metric
        loss_curve.png      train/validation loss against step
        metrics.json        final metrics
        throughput.json     training tokens/s and peak GPU memory (`tasks.distributed.Throughput`)
"""

from __future__ import annotations

import csv
import datetime as _dt
import importlib.util
import itertools
import json
import logging
import math
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pytorch_lightning.callbacks import WeightAveraging
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from tasks.cuda_graph_lightning import CUDAGraphTrainingCallback
from tasks.distributed import ModelOrderOptimizerState, PerRankSeed, Throughput, build_strategy

log = logging.getLogger(__name__)
RUN_DIR_ENV = "MAMBALAB_RUN_DIR"


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names the source and the key."""


@dataclass
class TrainerConfig:
    """The subset of `pl.Trainer` arguments a recipe exposes (names and meanings are Lightning's), plus
    `throughput_warmup_steps`: the optimizer steps before the throughput/memory measurement starts, and
    `ema_decay`: keep an exponential moving average of the weights (`WeightEMA`, None: off); validation, the
    checkpoints' `state_dict` and everything after `fit` then use the averaged weights; `cuda_graph`: replay each
    training step's forward, loss and backward from a CUDA graph (one GPU; `tasks.cuda_graph_lightning`)."""

    max_steps: int = 1000
    max_epochs: int | None = None
    val_check_interval: int | float = 200
    check_val_every_n_epoch: int | None = None
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float = 1.0
    num_sanity_val_steps: int = 0
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    gradient_clip_val: float | None = 1.0
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 10
    enable_progress_bar: bool = True
    deterministic: bool = False
    throughput_warmup_steps: int = 10
    ema_decay: float | None = None
    cuda_graph: bool = False


USAGE = """usage: python -m recipes.{job} [--config NAME_OR_PATH] [key=value ...]

  --config   a YAML in recipes/configs/{job}/ (by name, without .yaml) or a path; default: default
  key=value  OmegaConf dotlist overrides, e.g. trainer.max_steps=200 model.n_layer=4
"""


def load_config(schema: type, config_dir: Path, argv: Sequence[str], job: str) -> Any:
    """Build the typed config: schema defaults <- YAML <- `key=value` overrides; return a schema instance."""
    argv = list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE.format(job=job))  # noqa: T201 - CLI help text
        print(OmegaConf.to_yaml(OmegaConf.structured(schema)))  # noqa: T201
        raise SystemExit(0)
    config_name = "default"
    overrides = []
    while argv:
        arg = argv.pop(0)
        if arg == "--config" and argv:
            config_name = argv.pop(0)
        elif arg.startswith("--config="):
            config_name = arg.split("=", 1)[1]
        elif "=" in arg and not arg.startswith("-"):
            overrides.append(arg)
        else:
            raise ConfigError(f"unrecognized argument {arg!r}\n{USAGE.format(job=job)}")
    path = Path(config_name)
    if not path.suffix:
        path = config_dir / f"{config_name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in config_dir.glob("*.yaml"))
        raise ConfigError(f"config {config_name!r} not found (looked for {path}); available: {available}")
    cfg = OmegaConf.structured(schema)
    for source, layer in (
        (str(path), lambda: OmegaConf.load(path)),
        ("command line", lambda: OmegaConf.from_dotlist(overrides)),
    ):
        try:
            cfg = OmegaConf.merge(cfg, layer())
        except OmegaConfBaseException as err:
            key = getattr(err, "full_key", None)
            raise ConfigError(
                f"{source}: invalid config key {key!r}: {err.msg if hasattr(err, 'msg') else err}"
            ) from None
    try:
        return OmegaConf.to_object(cfg)
    except (OmegaConfBaseException, ValueError) as err:
        raise ConfigError(f"{path} + command line: {err}") from None


def git_revision() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return rev.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def _latest_resumable(job_root: Path) -> Path | None:
    candidates = sorted(p.parent.parent for p in job_root.glob("*/checkpoints/last.ckpt"))
    return candidates[-1] if candidates else None


def prepare_run_dir(cfg: Any, run_dir: str | None, job: str, *, resume: bool = False, root: str = "runs") -> Path:
    """Pick the run directory and write `config.yaml` and `git_revision.txt` into it.

    An explicit `run_dir` wins; with `resume` and no `run_dir`, the newest run of `job` that has a `last.ckpt`;
    otherwise a new `runs/<job>/<timestamp>`.
    """
    if run_dir:
        path = Path(run_dir)
    elif os.environ.get(RUN_DIR_ENV) and not is_global_zero():
        # A process that Lightning launched for another rank: use the directory rank 0 chose.
        path = Path(os.environ[RUN_DIR_ENV])
    elif resume:
        path = _latest_resumable(Path(root) / job)
        if path is None:
            raise FileNotFoundError(f"ckpt_path=last: no run under {Path(root) / job} has checkpoints/last.ckpt")
    else:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path, n = Path(root) / job / stamp, 1
        while path.exists():  # two runs started within one second
            path, n = Path(root) / job / f"{stamp}-{n}", n + 1
    path.mkdir(parents=True, exist_ok=True)
    # Lightning's DDP launcher re-runs the command for ranks > 0 with this environment: they must not pick a new
    # timestamped directory of their own.
    os.environ[RUN_DIR_ENV] = str(path.resolve())
    if is_global_zero():
        (path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        (path / "git_revision.txt").write_text(git_revision() + "\n")
    return path


def is_global_zero() -> bool:
    """True on the first process of a (possibly multi-node) run, also before the Trainer exists."""
    return (
        int(os.environ.get("RANK", 0)) == 0
        and int(os.environ.get("LOCAL_RANK", 0)) == 0
        and int(os.environ.get("NODE_RANK", 0)) == 0
    )


def resolve_ckpt_path(value: str | None, run_dir: Path) -> str | None:
    """`None` -> fresh start; `"last"` -> `run_dir/checkpoints/last.ckpt` (must exist); else a path that must exist."""
    if not value:
        return None
    path = run_dir / "checkpoints" / "last.ckpt" if value == "last" else Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={value}: {path} does not exist")
    return str(path)


class LossCurvePlot(pl.Callback):
    """Writes `loss_curve.png` (train and validation loss against step) from the CSV log at the end of fitting."""

    def __init__(self, run_dir: Path, metrics: Sequence[str] = ("train/loss", "val/loss")) -> None:
        self.run_dir, self.metrics = Path(run_dir), tuple(metrics)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            plot_metric_curves(self.run_dir / "metrics.csv", self.metrics, self.run_dir / "loss_curve.png")


def read_metric_curves(csv_path: Path, metrics: Sequence[str]) -> dict[str, tuple[list[int], list[float]]]:
    curves: dict[str, tuple[list[int], list[float]]] = {m: ([], []) for m in metrics}
    if not csv_path.is_file():
        return curves
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            for metric in metrics:
                if row.get(metric):
                    curves[metric][0].append(int(row["step"]))
                    curves[metric][1].append(float(row[metric]))
    return curves


def plot_metric_curves(csv_path: Path, metrics: Sequence[str], out_path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = read_metric_curves(csv_path, metrics)
    if not any(steps for steps, _ in curves.values()):
        log.warning("no %s values in %s: no plot written", metrics, csv_path)
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for metric, (steps, values) in curves.items():
        if steps:
            ax.plot(steps, values, label=metric, marker="o" if metric.startswith("val") else None, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path


def plot_confusion_matrix(cm, labels: Sequence[str], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(labels) + 2),) * 2)
    ConfusionMatrixDisplay(cm, display_labels=list(labels)).plot(ax=ax, colorbar=False, xticks_rotation=45)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_metrics_json(run_dir: Path, metrics: dict) -> Path:
    """Write `metrics.json` (on the global-zero process only, so a multi-process run writes it once)."""

    def plain(value):
        return value.item() if hasattr(value, "item") else value

    path = Path(run_dir) / "metrics.json"
    if not is_global_zero():
        return path
    path.write_text(json.dumps({k: plain(v) for k, v in metrics.items()}, indent=2, sort_keys=True) + "\n")
    return path


def build_trainer(
    trainer_cfg: TrainerConfig,
    run_dir: Path,
    *,
    monitor: str = "val/loss",
    mode: str = "min",
    extra_callbacks: Sequence[pl.Callback] = (),
    tokens_key: str | None = None,
) -> pl.Trainer:
    """A Trainer that logs to CSV (and TensorBoard if installed), checkpoints last + best, and shows progress.

    On any number of devices: ranks > 0 get their own random stream from `fit` on (`PerRankSeed`), and training
    throughput (`tokens_key`: the batch entry that holds tokens) and peak memory are measured (`Throughput`;
    `tasks.distributed.throughput_metrics(trainer)` returns them for `metrics.json`).
    """
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    run_dir = Path(run_dir)
    loggers = [CSVLogger(save_dir=run_dir, name="", version="")]
    if importlib.util.find_spec("tensorboard") is not None:
        loggers.append(TensorBoardLogger(save_dir=run_dir, name="tensorboard", version=""))
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints", filename="best-{step}", monitor=monitor, mode=mode, save_top_k=1,
            save_last=True, auto_insert_metric_name=False,
        ),
        LearningRateMonitor(logging_interval="step"),
        LossCurvePlot(run_dir),
        PerRankSeed(),
        ModelOrderOptimizerState(),
        Throughput(trainer_cfg.throughput_warmup_steps, tokens_key),
        *extra_callbacks,
    ]  # fmt: skip
    if trainer_cfg.ema_decay is not None:
        if not 0.0 < trainer_cfg.ema_decay < 1.0:
            raise ConfigError(f"trainer.ema_decay must be in (0, 1) (or null: off), got {trainer_cfg.ema_decay}")
        if str(trainer_cfg.strategy).startswith(SHARDED_STRATEGY_NAMES):
            raise ConfigError(WeightEMA.sharded_error(trainer_cfg.strategy))
        callbacks.append(WeightEMA(trainer_cfg.ema_decay))
    if trainer_cfg.cuda_graph:
        callbacks.append(CUDAGraphTrainingCallback())
    if trainer_cfg.enable_progress_bar:
        callbacks.append(RichProgressBar())
    # None is meaningful to Lightning here (e.g. check_val_every_n_epoch=None validates across epoch boundaries).
    kwargs = dict(vars(trainer_cfg))
    del kwargs["throughput_warmup_steps"], kwargs["ema_decay"], kwargs["cuda_graph"]
    kwargs["strategy"] = build_strategy(trainer_cfg.strategy)
    return pl.Trainer(default_root_dir=run_dir, logger=loggers, callbacks=callbacks, **kwargs)


SHARDED_STRATEGY_NAMES = ("fsdp", "deepspeed", "model_parallel")


class _AveragedModel(AveragedModel):
    """`AveragedModel` (parameters and buffers) that keeps its update count on the CPU, so an update only queues
    device work: the parent reads the count back from the device and copies it there at every update, each a wait
    for the GPU. Same arithmetic: the first update copies, later ones call `multi_avg_fn` per device and dtype."""

    def __init__(self, model: torch.nn.Module, device: torch.device | None, multi_avg_fn: Callable) -> None:
        super().__init__(model, device=device, multi_avg_fn=multi_avg_fn, use_buffers=True)
        self.n_averaged = self.n_averaged.cpu()

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module) -> None:
        groups: dict[tuple, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        mine = itertools.chain(self.module.parameters(), self.module.buffers())
        theirs = itertools.chain(model.parameters(), model.buffers())
        for averaged, current in zip(mine, theirs, strict=True):
            group = groups.setdefault((averaged.device, averaged.dtype), ([], []))
            group[0].append(averaged.detach())
            group[1].append(current.detach().to(averaged.device))
        first = int(self.n_averaged) == 0
        for averaged, current in groups.values():
            if first:
                for a, c in zip(averaged, current):
                    a.copy_(c)
            else:
                self.multi_avg_fn(averaged, current, self.n_averaged)
        self.n_averaged += 1


class WeightEMA(WeightAveraging):
    """Exponential moving average of the weights, on Lightning's `WeightAveraging` (`trainer.ema_decay`).

    After optimizer step t (1, 2, ...) the average moves toward the weights: `avg = d_t * avg + (1 - d_t) * w` with
    `d_t = min(decay, (1 + t) / (10 + t))` (TensorFlow's `ExponentialMovingAverage` with `num_updates`): early on the
    average spans about the last t/9 steps instead of keeping the initialization for ~1/(1 - decay) steps, so a short
    run's average is not mostly its first, untrained weights. The decay follows `global_step`, so a resumed run
    continues the same sequence.

    What `WeightAveraging` does with it: each validation during `fit` runs on the averaged weights (swapped in and out
    again); every checkpoint's `state_dict` holds the averaged weights (the raw ones go to `current_model_state`, the
    average's step count to `averaging_state`), so the best checkpoint by a validation metric is the average that
    scored it, and `ckpt_path=...` resumes both; when `fit` ends the module holds the averaged weights.

    Added here: when `fit` ends the average is dropped (`teardown`), so a later `trainer.validate/test(ckpt_path=...)`
    scores, and leaves in the module, the checkpoint's `state_dict` as it is (the parent would swap in its own
    last average, and, loading the checkpoint, put its raw weights back in the module). The update count stays on
    the CPU (`_AveragedModel`), so an update adds no host-device synchronization. Sharded strategies (FSDP,
    DeepSpeed, model parallel) are refused: `WeightAveraging` pairs the module's parameters one to one with a full
    copy, which sharded (flattened) parameters break. DDP works: every rank holds the same average of the same
    (synchronized) weights.
    """

    def __init__(self, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"WeightEMA: decay must be in (0, 1), got {decay}")
        super().__init__(use_buffers=True, multi_avg_fn=self._ema_update)
        self.decay = decay
        self._decay_now = decay

    @staticmethod
    def sharded_error(strategy: Any) -> str:
        return (
            f"trainer.ema_decay (weight EMA) does not support the sharded strategy {strategy!r}: Lightning's "
            "WeightAveraging needs whole parameters; use trainer.strategy=ddp or set trainer.ema_decay=null"
        )

    def decay_at(self, step: int) -> float:
        """`d_t` after optimizer step `step` (1-based)."""
        return min(self.decay, (1 + step) / (10 + step))

    def _ema_update(self, averaged: list[torch.Tensor], current: list[torch.Tensor], _n_averaged) -> None:
        get_ema_multi_avg_fn(self._decay_now)(averaged, current, _n_averaged)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """As `WeightAveraging.setup` (a copy of the module when `fit` starts), with `_AveragedModel`."""
        from pytorch_lightning.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
        from pytorch_lightning.utilities.model_helpers import is_overridden

        if stage != "fit":
            return
        if isinstance(trainer.strategy, (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)):
            raise ValueError(self.sharded_error(type(trainer.strategy).__name__))
        if is_overridden("configure_model", pl_module):
            pl_module.configure_model()  # the layers must exist before they are copied
        # `pl_module.device` is already the strategy's root device here (Lightning sets it before the setup hooks).
        self._average_model = _AveragedModel(pl_module, self._device or pl_module.device, self._ema_update)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._decay_now = self.decay_at(trainer.global_step)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._average_model = None

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if self._average_model is not None:  # fitting (resume); otherwise `state_dict` is already the average
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


class TimeBudget(pl.Callback):
    """Sets `max_steps` (and the module's LR-schedule length, `pl_module.total_steps`) so training takes about
    `minutes` of wall-clock time.

    The step time is measured between the two steps of `probe` (after warm-up, compilation and the first
    validation); a `reserve` fraction of the budget is kept for validation passes. Training also stops outright once
    the budget is spent. Lightning's `Timer` only stops; this also shortens the schedule so the LR still decays.
    Under several processes rank 0's clock decides for all, so every rank stops at the same step.
    """

    def __init__(self, minutes: float, probe: tuple[int, int] = (5, 15), reserve: float = 0.2) -> None:
        self.budget_s, self.probe, self.reserve = minutes * 60.0, probe, reserve
        self.fit_start = self.probe_start = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import time

        self.fit_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import time

        step, now = trainer.global_step, time.perf_counter()
        if step == self.probe[0]:
            self.probe_start = now
        elif step == self.probe[1] and self.probe_start:
            per_step = (now - self.probe_start) / (self.probe[1] - self.probe[0])
            remaining = (1 - self.reserve) * self.budget_s - (now - self.fit_start)
            steps = trainer.strategy.broadcast(min(trainer.max_steps, step + max(0, int(remaining / per_step))))
            trainer.fit_loop.epoch_loop.max_steps = steps
            if hasattr(pl_module, "total_steps"):
                pl_module.total_steps = steps
            log.info("time budget %.1f min: %.1f ms/step -> max_steps=%d", self.budget_s / 60, per_step * 1e3, steps)
        over = now - self.fit_start > self.budget_s
        if trainer.world_size > 1:  # a collective, so only every 10th step
            over = step % 10 == 0 and trainer.strategy.broadcast(over)
        if over:
            trainer.should_stop = True


def warmup_cosine(step: int, warmup: int, total: int, floor: float) -> float:
    """LR multiplier: linear warm-up over `warmup` steps, then cosine decay to `floor` at step `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def adamw_warmup_cosine(
    param_groups: list[dict],
    *,
    lr: float,
    betas: tuple[float, float],
    warmup: int,
    total_steps: Callable[[], int],
    floor: float,
) -> dict:
    """AdamW + per-step warm-up/cosine schedule, as `configure_optimizers` returns it.

    `total_steps` is read at every step, so a `TimeBudget` that shortens training also shortens the schedule.
    Not `fused=True`: Lightning's mixed-precision plugin refuses gradient clipping with an optimizer that unscales
    gradients itself, which the fused AdamW declares (an H100 run with `gradient_clip_val` stopped at the first step).
    """
    optimizer = torch.optim.AdamW(param_groups, lr=lr, betas=tuple(betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup, total_steps(), floor)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
