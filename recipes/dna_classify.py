"""Fine-tune a DNA sequence classifier from a pretrained Mamba DNA model, or train one from scratch.

Tasks: a GUE benchmark folder (`sequence,label` CSVs: human TF binding `tf/0`..`tf/4`, promoters `prom/prom_core_all`,
...; found under `MAMBALAB_DATA`), or species classification: random windows from several genomes, label = genome
(the Mamba paper's great-apes experiment, here on the genomes of `tasks.genomics.catalog`). Beside the model, a
k-mer + logistic-regression baseline (scikit-learn) is fit on the same training split and scored on the same test
split.

    python -m recipes.dna_classify                                          # GUE tf/0, from scratch
    python -m recipes.dna_classify data.gue_task=prom/prom_core_all
    python -m recipes.dna_classify init_from=runs/dna_pretrain/<time>/model # fine-tune a dna_pretrain model
    python -m recipes.dna_classify --config species                         # 5 eukaryotes, 256-base windows
    python -m recipes.dna_classify model.rc_invariant=true model.direction=bidirectional
    python -m recipes.dna_classify run_dir=runs/dna_classify/<time> ckpt_path=last   # resume

Run directory: config.yaml, git_revision.txt, metrics.csv, checkpoints/, loss_curve.png, confusion_matrix.png,
metrics.json (test accuracy, MCC, F1, ROC-AUC of the model and of the baseline).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import Timer

from backbone import MambaConfig
from backbone.init import optimizer_groups
from tasks.distributed import gather_ordered, throughput_metrics
from tasks.genomics.baseline import kmer_logistic_baseline
from tasks.genomics.data import GUEDataModule, SpeciesDataModule, materialize
from tasks.genomics.heads import DNAClassifier
from tasks.genomics.metrics import classification_metrics, confusion_matrix
from tasks.genomics.tokenizer import DNATokenizer
from tasks.lm import MambaLM, MambaLMConfig
from tasks.runs import (
    TrainerConfig,
    adamw_warmup_cosine,
    build_trainer,
    load_config,
    plot_confusion_matrix,
    prepare_run_dir,
    resolve_ckpt_path,
    write_metrics_json,
)

log = logging.getLogger("recipes.dna_classify")
JOB = "dna_classify"
CONFIG_DIR = Path(__file__).resolve().parent / "configs" / JOB


@dataclass
class DataConfig:
    task: Literal["gue", "species"] = "gue"
    gue_task: str = "tf/0"  # a folder under GUE/: tf/0..tf/4, prom/prom_core_all, prom/prom_300_tata, ...
    gue_path: str | None = None  # the GUE folder (default: found under MAMBALAB_DATA)
    max_train_samples: int | None = None  # GUE: a seeded subset of the training rows (CPU budgets)
    max_eval_samples: int | None = None  # GUE: a seeded subset of the dev and test rows (smoke tests)
    genomes: list[str] = field(default_factory=lambda: ["human_chr2_segment", "arabidopsis_1pct", "celegans_1pct",
                                                        "drosophila_1pct", "yeast_chr1"])  # fmt: skip
    seq_len: int = 256  # species windows
    train_samples: int = 20_000  # species: random training windows
    max_eval_windows: int = 200  # species: per genome and held-out split
    block_size: int = 20_000  # species: region-split block
    batch_size: int = 32
    num_workers: int = 0


@dataclass
class ModelConfig:
    init_from: str | None = None  # a dna_pretrain `model/` directory; None trains from scratch with the sizes below
    d_model: int = 128
    n_layer: int = 4
    d_state: int = 16
    expand: int = 2
    pooling: Literal["mean", "last"] = "mean"
    direction: Literal["causal", "bidirectional"] = "causal"
    rc_invariant: bool = False  # average logits over both strands (post-hoc conjoining)
    dropout: float = 0.1


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1


@dataclass
class BaselineConfig:
    enabled: bool = True
    ks: list[int] = field(default_factory=lambda: [3, 4, 5, 6])
    C: float = 1.0
    max_train_samples: int | None = 20_000


@dataclass
class DNAClassifyConfig:
    seed: int = 0
    run_dir: str | None = None
    ckpt_path: str | None = None
    time_budget_minutes: float | None = None  # stop training after this much wall time
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(max_steps=500, val_check_interval=100))


class DNAClassifyModule(pl.LightningModule):
    """Cross-entropy on pooled sequence logits; accuracy, MCC, F1, ROC-AUC on validation and test."""

    def __init__(self, model: DNAClassifier, optim: dict, max_steps: int):
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model, self.optim_cfg, self.total_steps = model, optim, max_steps
        self._outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"val": [], "test": []}
        self.test_predictions: tuple[np.ndarray, np.ndarray] | None = None

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids, mask)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = F.cross_entropy(self(batch["input_ids"], batch["mask"]).float(), batch["label"])
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)  # the global batch's loss under DDP
        return loss

    def _eval_step(self, batch: dict, stage: str) -> None:
        self._outputs[stage].append((self(batch["input_ids"], batch["mask"]).float().cpu(), batch["label"].cpu()))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_end(self, stage: str) -> None:
        """Metrics over the whole split: every rank's outputs gathered, each sequence counted once."""
        outputs, self._outputs[stage] = self._outputs[stage], []
        if not outputs:
            return
        logits = gather_ordered(self, torch.cat([x for x, _ in outputs]), stage)  # [N, C]
        labels = gather_ordered(self, torch.cat([y for _, y in outputs]), stage)  # [N]
        self.log(f"{stage}/loss", F.cross_entropy(logits, labels).item(), prog_bar=stage == "val")
        probs, labels = logits.softmax(-1).numpy(), labels.numpy()
        for key, value in classification_metrics(labels, probs).items():
            self.log(f"{stage}/{key}", value, prog_bar=stage == "val" and key == "mcc")
        if stage == "test":
            self.test_predictions = (labels, probs)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def configure_optimizers(self):
        cfg = self.optim_cfg
        return adamw_warmup_cosine(
            optimizer_groups(self.model, cfg["weight_decay"]), lr=cfg["lr"], betas=cfg["betas"],
            warmup=cfg["warmup_steps"], total_steps=lambda: self.total_steps, floor=cfg["min_lr_ratio"],
        )  # fmt: skip


def build_data(cfg: DataConfig, seed: int) -> GUEDataModule | SpeciesDataModule:
    if cfg.task == "gue":
        return GUEDataModule(cfg.gue_task, path=cfg.gue_path, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                             max_train_samples=cfg.max_train_samples, max_eval_samples=cfg.max_eval_samples,
                             seed=seed)  # fmt: skip
    return SpeciesDataModule(cfg.genomes, seq_len=cfg.seq_len, batch_size=cfg.batch_size, block_size=cfg.block_size,
                             train_samples=cfg.train_samples, max_eval_windows=cfg.max_eval_windows, seed=seed,
                             num_workers=cfg.num_workers)  # fmt: skip


def build_model(cfg: ModelConfig, num_classes: int) -> DNAClassifier:
    if cfg.init_from:
        lm = MambaLM.from_pretrained(cfg.init_from)
        if lm.config.vocab_size != DNATokenizer().vocab_size:
            raise ValueError(f"model.init_from={cfg.init_from}: vocab size {lm.config.vocab_size} is not the DNA "
                             f"vocabulary's ({DNATokenizer().vocab_size}); is it a dna_pretrain model?")  # fmt: skip
    else:
        backbone = MambaConfig(d_model=cfg.d_model, n_layer=cfg.n_layer, d_state=cfg.d_state, expand=cfg.expand)
        lm = MambaLM(MambaLMConfig(backbone, vocab_size=DNATokenizer().vocab_size))
    return DNAClassifier(lm, num_classes, pooling=cfg.pooling, direction=cfg.direction,
                         rc_invariant=cfg.rc_invariant, dropout=cfg.dropout)  # fmt: skip


def run_baseline(cfg: BaselineConfig, datamodule) -> dict[str, float]:
    start = time.perf_counter()
    train = materialize(datamodule.splits["train"], cfg.max_train_samples)
    test = materialize(datamodule.splits["test"])
    scores = kmer_logistic_baseline(train, test, ks=tuple(cfg.ks), C=cfg.C)
    log.info("k-mer baseline (k=%s, %d training sequences, %.1fs): %s", list(cfg.ks), len(train[0]),
             time.perf_counter() - start, {k: round(v, 4) for k, v in scores.items()})  # fmt: skip
    return {f"baseline/test/{k}": v for k, v in scores.items()}


def main(argv: list[str] | None = None) -> dict:
    import sys

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg: DNAClassifyConfig = load_config(DNAClassifyConfig, CONFIG_DIR, sys.argv[1:] if argv is None else argv, JOB)
    pl.seed_everything(cfg.seed, workers=True)
    run_dir = prepare_run_dir(cfg, cfg.run_dir, JOB, resume=cfg.ckpt_path == "last")
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, run_dir)
    datamodule = build_data(cfg.data, cfg.seed)
    datamodule.setup("fit")  # reads and checks all data now, before any worker starts
    model = build_model(cfg.model, datamodule.num_classes)
    module = DNAClassifyModule(model, asdict(cfg.optim), cfg.trainer.max_steps)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("%s: %d classes, %s train / %d val / %d test; model %.2fM parameters (%s); run dir %s",
             cfg.data.gue_task if cfg.data.task == "gue" else "species", datamodule.num_classes,
             len(datamodule.splits["train"]), len(datamodule.splits["val"]), len(datamodule.splits["test"]),
             n_params / 1e6, cfg.model.init_from or "scratch", run_dir)  # fmt: skip
    budget = [Timer(duration={"minutes": cfg.time_budget_minutes})] if cfg.time_budget_minutes else []
    trainer = build_trainer(cfg.trainer, run_dir, monitor="val/loss", mode="min", extra_callbacks=budget,
                            tokens_key="input_ids")  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    train_s = time.perf_counter() - start
    best = trainer.checkpoint_callback.best_model_path or None
    metrics = dict(trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)[0])
    if not trainer.is_global_zero:  # every rank holds the gathered test predictions; one reports
        return metrics
    labels, probs = module.test_predictions
    plot_confusion_matrix(confusion_matrix(labels, probs.argmax(1), datamodule.num_classes), datamodule.class_names,
                          run_dir / "confusion_matrix.png", title="test split")  # fmt: skip
    if cfg.baseline.enabled:
        metrics |= run_baseline(cfg.baseline, datamodule)
    metrics |= {
        "task": cfg.data.gue_task if cfg.data.task == "gue" else "species:" + ",".join(cfg.data.genomes),
        "init": cfg.model.init_from or "scratch",
        "n_parameters": n_params,
        "steps": trainer.global_step,
        "train_seconds": round(train_s, 1),
        "best_checkpoint": best,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    metrics |= throughput_metrics(trainer)
    write_metrics_json(run_dir, metrics)
    log.info("test: %s", {k: round(v, 4) for k, v in metrics.items() if "/test/" in k or k.startswith("test/")})
    return metrics


if __name__ == "__main__":
    main()
