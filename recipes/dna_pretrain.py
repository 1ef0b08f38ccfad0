"""Pretrain a Mamba DNA language model (next-base prediction); report loss, perplexity and bits per base.

The default corpus is E. coli K-12 (RefSeq GCF_000005845.2, found through `MAMBALAB_DATA`, else downloaded from
NCBI). The genome is cut into 50 kb blocks; 5% of the blocks are held out for validation, training draws random
windows (both strands) from the rest. Extra genomes in `data.eval_genomes` (e.g. the human chr2 segment) are scored
as further validation sets. A model that knows nothing scores 2 bits per base (log2 of 4 bases).

    python -m recipes.dna_pretrain                                        # CPU default: a few minutes
    python -m recipes.dna_pretrain --config gpu                           # bigger, longer context, bf16-mixed
    python -m recipes.dna_pretrain data.genome=human_chr2_segment data.eval_genomes=[ecoli_k12]
    python -m recipes.dna_pretrain data.path=my_genome.fa.gz trainer.max_steps=2000
    python -m recipes.dna_pretrain ckpt_path=last                         # resume the newest interrupted run
    python -m recipes.dna_pretrain mode=eval init_from=runs/dna_pretrain/<time>/model \\
        data.eval_genomes=[human_chr2_segment]                            # score a trained model only

Run directory: config.yaml, git_revision.txt, metrics.csv, checkpoints/ (last + best), loss_curve.png,
metrics.json (initial and final validation metrics), model/ (`MambaLM.from_pretrained`, DNATokenizer ids).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import torch

from backbone import MambaConfig
from backbone.init import optimizer_groups
from tasks.cuda_graph_lightning import CUDAGraphTraining
from tasks.distributed import throughput_metrics, unsharded_state_dict
from tasks.genomics.data import PretrainDataConfig, PretrainDataModule
from tasks.genomics.metrics import NextBaseMetrics, next_base_nll
from tasks.genomics.tokenizer import DNATokenizer
from tasks.lm import MambaLM, MambaLMConfig
from tasks.runs import (
    TimeBudget,
    TrainerConfig,
    adamw_warmup_cosine,
    build_trainer,
    load_config,
    prepare_run_dir,
    resolve_ckpt_path,
    write_metrics_json,
)

log = logging.getLogger("recipes.dna_pretrain")
JOB = "dna_pretrain"
CONFIG_DIR = Path(__file__).resolve().parent / "configs" / JOB


@dataclass
class ModelConfig:
    d_model: int = 64
    n_layer: int = 4
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2


@dataclass
class OptimConfig:
    lr: float = 3e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1  # cosine decay from lr to lr * min_lr_ratio at the last step


@dataclass
class DNAPretrainConfig:
    mode: Literal["train", "eval"] = "train"  # eval: score `init_from` / `ckpt_path` on the validation sets only
    seed: int = 0
    run_dir: str | None = None
    ckpt_path: str | None = None  # "last" resumes (the newest run, or run_dir's); or a Lightning checkpoint
    init_from: str | None = None  # a `save_pretrained` directory to start from (fine-tuning, evaluation)
    time_budget_minutes: float | None = None  # stop training after this much wall time (the LR schedule follows)
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(max_steps=300, val_check_interval=50))


class DNAPretrainModule(CUDAGraphTraining, pl.LightningModule):
    """Next-base cross-entropy on genome windows; per validation set: loss, perplexity, bits per base."""

    def __init__(self, model_cfg: dict, optim_cfg: dict, val_names: list[str], max_steps: int):
        super().__init__()
        self.save_hyperparameters()
        self.model = MambaLM(MambaLMConfig(MambaConfig(**model_cfg), vocab_size=DNATokenizer().vocab_size))
        self.optim_cfg = optim_cfg
        # The first validation set is the held-out region of the training genome: it is what "val/..." means.
        self.val_names = ["val", *(f"val_{name}" for name in val_names[1:])]
        self.val_metrics = torch.nn.ModuleList(NextBaseMetrics() for _ in self.val_names)
        self.total_steps = max_steps

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """`[B, L]` int64 -> logits `[B, L, V_padded]`."""
        return self.model(input_ids)

    def next_base_loss(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """`[B, L]` ids and labels -> the mean cross-entropy over scored positions (0-dim, fp32)."""
        nats, count = next_base_nll(self(input_ids), labels)
        return nats / count.clamp(min=1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # Eager, or replayed from a CUDA graph with trainer.cuda_graph=true (tasks/cuda_graph_lightning.py).
        loss = self.training_loss(self.next_base_loss, batch["input_ids"], batch["labels"])
        # sync_dist: under DDP the logged value is the mean over ranks, i.e. the loss of the global batch.
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        self.log("train/bits_per_base", loss / math.log(2), prog_bar=True, sync_dist=True)
        self.log("train/perplexity", torch.exp(loss.detach()), sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.val_metrics[dataloader_idx].update(*next_base_nll(self(batch["input_ids"]), batch["labels"]))

    def on_validation_epoch_end(self) -> None:
        for name, metric in zip(self.val_names, self.val_metrics):
            if metric.update_count == 0:
                continue
            for key, value in metric.compute().items():
                self.log(f"{name}/{key}", value, prog_bar=name == "val" and key == "bits_per_base")
            metric.reset()

    def configure_optimizers(self):
        cfg = self.optim_cfg
        return adamw_warmup_cosine(
            optimizer_groups(self.model, cfg["weight_decay"]), lr=cfg["lr"], betas=cfg["betas"],
            warmup=cfg["warmup_steps"], total_steps=lambda: self.total_steps, floor=cfg["min_lr_ratio"],
        )  # fmt: skip


def build_module(cfg: DNAPretrainConfig, datamodule: PretrainDataModule) -> DNAPretrainModule:
    module = DNAPretrainModule(asdict(cfg.model), asdict(cfg.optim), datamodule.val_names, cfg.trainer.max_steps)
    if cfg.init_from:
        module.model = MambaLM.from_pretrained(cfg.init_from)
        if module.model.config.vocab_size != DNATokenizer().vocab_size:
            raise ValueError(f"init_from={cfg.init_from}: vocab size {module.model.config.vocab_size} is not the DNA "
                             f"vocabulary's ({DNATokenizer().vocab_size})")  # fmt: skip
        module.hparams.model_cfg = {k: v for k, v in asdict(module.model.config.backbone).items()}
    return module


def validate(trainer: pl.Trainer, module, datamodule, ckpt_path: str | None = None) -> dict[str, float]:
    metrics = {}
    for results in trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False):
        metrics |= {k.split("/dataloader_idx_")[0]: v for k, v in results.items()}
    return metrics


def main(argv: list[str] | None = None) -> dict:
    import sys

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg: DNAPretrainConfig = load_config(DNAPretrainConfig, CONFIG_DIR, sys.argv[1:] if argv is None else argv, JOB)
    pl.seed_everything(cfg.seed, workers=True)
    resume = cfg.ckpt_path == "last"
    run_dir = prepare_run_dir(cfg, cfg.run_dir, JOB, resume=resume)
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, run_dir)
    datamodule = PretrainDataModule(cfg.data)
    datamodule.setup("fit")  # reads and checks every genome now, before any worker starts
    module = build_module(cfg, datamodule)
    n_params = sum(p.numel() for p in module.model.parameters())
    log.info("model: %.2fM parameters; %d validation set(s) %s; run dir %s",
             n_params / 1e6, len(datamodule.val_names), datamodule.val_names, run_dir)  # fmt: skip
    callbacks = [TimeBudget(cfg.time_budget_minutes)] if cfg.time_budget_minutes and cfg.mode == "train" else []
    trainer = build_trainer(cfg.trainer, run_dir, monitor="val/loss", mode="min", extra_callbacks=callbacks,
                            tokens_key="input_ids")  # fmt: skip

    metrics: dict = {}
    if cfg.mode == "eval":
        metrics |= validate(trainer, module, datamodule, ckpt_path)
        best = ckpt_path
    else:
        if ckpt_path is None:
            metrics |= {f"initial/{k}": v for k, v in validate(trainer, module, datamodule).items()}
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics["train_seconds"] = round(time.perf_counter() - start, 1)
        # Score the final weights (the last step is rarely a validation step), then keep the best checkpoint if a
        # periodic validation beat them; `module` ends up holding the weights that are reported and exported.
        metrics |= validate(trainer, module, datamodule)
        best = trainer.checkpoint_callback.best_model_path or None
        best_score = trainer.checkpoint_callback.best_model_score
        metrics["reported_weights"] = f"final (step {trainer.global_step})"
        if best and best_score is not None and best_score < metrics["val/loss"]:
            metrics |= validate(trainer, module, datamodule, best)
            metrics["reported_weights"] = best
    metrics |= {
        "n_parameters": n_params,
        "steps": trainer.global_step,
        "best_checkpoint": best,
        "genome": cfg.data.genome,
        "eval_genomes": list(cfg.data.eval_genomes),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    metrics |= throughput_metrics(trainer)
    weights = unsharded_state_dict(trainer)  # every rank: FSDP gathers the shards here
    if not trainer.is_global_zero:  # under DDP/FSDP every rank gets here; one writes
        return metrics
    write_metrics_json(run_dir, metrics)
    model = MambaLM(module.model.config)
    model.load_state_dict(weights)
    export = model.save_pretrained(run_dir / "model")
    log.info("validation bits/base: %s; exported %s",
             {k: round(v, 4) for k, v in metrics.items() if k.endswith("bits_per_base")}, export)  # fmt: skip
    return metrics


if __name__ == "__main__":
    main()
