"""Fine-tune a spoken-audio classifier on mu-law waveforms, from a pretrained audio backbone or from scratch.

Usage (from the repository root)::

    # FSDD, standard split (take index 0-4 is test), GPU config
    python -m recipes.audio_classify
    # speaker-held-out: train on four speakers, test on the fifth
    python -m recipes.audio_classify data.test_speakers=[theo]
    # start from a waveform model written by recipes.audio_pretrain
    python -m recipes.audio_classify init_from=runs/audio_pretrain/<stamp>/pretrained
    # your own recordings: a manifest CSV (path,label[,speaker][,split]) or labels in the file names
    python -m recipes.audio_classify data.source=manifest data.path=my_clips/manifest.csv data.skip_bad_files=true
    python -m recipes.audio_classify data.source=folder data.path=my_clips 'data.pattern=(?P<label>\\w+)-\\d+\\.wav'
    # resume, CPU smoke config, prediction on a folder of WAV files
    python -m recipes.audio_classify run_dir=runs/audio_classify/<stamp> ckpt_path=last
    python -m recipes.audio_classify --config tiny
    python -m recipes.audio_classify predict runs/audio_classify/<stamp> path/to/wavs

The run directory gets config.yaml, metrics.csv, checkpoints/, loss_curve.png, labels.json, metrics.json
(accuracy, macro-F1, per-class report), classification_report.txt and confusion_matrix.png (test split).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from backbone import MambaConfig
from backbone.init import optimizer_groups
from tasks.audio.data import AudioDataConfig, AudioDataModule, AudioRecord, BadFiles, load_waveforms
from tasks.audio.metrics import classification_report
from tasks.audio.model import AudioClassifier, AudioModelConfig
from tasks.audio.tokenizer import MuLawTokenizer
from tasks.audio.transforms import place
from tasks.distributed import gather_ordered, throughput_metrics
from tasks.runs import (
    TrainerConfig,
    adamw_warmup_cosine,
    build_trainer,
    is_global_zero,
    load_config,
    plot_confusion_matrix,
    prepare_run_dir,
    resolve_ckpt_path,
    write_metrics_json,
)

log = logging.getLogger("recipes.audio_classify")
CONFIG_DIR = Path(__file__).parent / "configs" / "audio_classify"


@dataclass
class ModelConfig:
    """The encoder (front-end + backbone) shape, used when training from scratch, and the classification head."""

    d_model: int = 128
    n_layer: int = 4
    d_state: int = 16
    expand: int = 2
    embed_dim: int = 32
    strides: list[int] = field(default_factory=lambda: [4, 4])
    pooling: str = "mean"
    bidirectional: str | None = "add"
    dropout: float = 0.1


@dataclass
class OptimConfig:
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    label_smoothing: float = 0.05


@dataclass
class ClassifyConfig:
    data: AudioDataConfig = field(default_factory=AudioDataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    init_from: str | None = None  # an AudioLM.save_pretrained directory (recipes.audio_pretrain writes one)
    run_dir: str | None = None
    ckpt_path: str | None = None  # "last" or a checkpoint path, to resume
    max_time_s: float | None = None  # stop training after this many seconds (then evaluate), on top of max_steps
    seed: int = 0


class AudioClassifierModule(pl.LightningModule):
    """Cross-entropy training of an `AudioClassifier`; logs loss and accuracy, collects test predictions."""

    def __init__(self, model: AudioClassifier, optim: OptimConfig) -> None:
        super().__init__()
        self.model, self.optim = model, optim
        self.test_true: list[int] = []
        self.test_pred: list[int] = []
        self._outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"val": [], "test": []}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self.model(batch["tokens"])  # [B, C]
        loss = F.cross_entropy(logits.float(), batch["label"], label_smoothing=self.optim.label_smoothing)
        acc = (logits.argmax(-1) == batch["label"]).float().mean()
        size = batch["label"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size, on_step=True, on_epoch=True, sync_dist=True)
        self.log("train/acc", acc, prog_bar=True, batch_size=size, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._outputs["val"].append((self.model(batch["tokens"]).float().cpu(), batch["label"].cpu()))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._outputs["test"].append((self.model(batch["tokens"]).float().cpu(), batch["label"].cpu()))

    def _eval_end(self, stage: str) -> None:
        """Loss and accuracy over the whole split: every rank's outputs gathered, each clip counted once."""
        outputs, self._outputs[stage] = self._outputs[stage], []
        if not outputs:
            return
        logits = gather_ordered(self, torch.cat([x for x, _ in outputs]), stage)  # [N, C]
        labels = gather_ordered(self, torch.cat([y for _, y in outputs]), stage)  # [N]
        preds = logits.argmax(-1)
        self.log(f"{stage}/loss", F.cross_entropy(logits, labels).item(), prog_bar=True)
        self.log(f"{stage}/acc", (preds == labels).float().mean().item(), prog_bar=True)
        if stage == "test":
            self.test_true, self.test_pred = labels.tolist(), preds.tolist()

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def configure_optimizers(self):
        total = max(1, self.trainer.estimated_stepping_batches)
        return adamw_warmup_cosine(
            optimizer_groups(self.model, self.optim.weight_decay), lr=self.optim.lr, betas=(0.9, 0.999),
            warmup=min(self.optim.warmup_steps, total // 10 + 1), total_steps=lambda: total, floor=0.1,
        )  # fmt: skip


def build_model(cfg: ClassifyConfig, num_classes: int) -> AudioClassifier:
    head = {"pooling": cfg.model.pooling, "bidirectional": cfg.model.bidirectional, "dropout": cfg.model.dropout}
    if cfg.init_from:
        model = AudioClassifier.from_pretrained_encoder(cfg.init_from, num_classes, **head)
        log.info("encoder initialized from %s (its shape overrides model.d_model/n_layer/...)", cfg.init_from)
        return model
    backbone = MambaConfig(d_model=cfg.model.d_model, n_layer=cfg.model.n_layer, d_state=cfg.model.d_state,
                           expand=cfg.model.expand)  # fmt: skip
    encoder = AudioModelConfig(backbone, embed_dim=cfg.model.embed_dim, strides=list(cfg.model.strides))
    return AudioClassifier(encoder, num_classes, **head)


def time_limit(seconds: float | None) -> list[pl.Callback]:
    """A wall-clock budget for training; Lightning stops cleanly (checkpoints, then evaluation) when it runs out."""
    if not seconds:
        return []
    from datetime import timedelta

    from pytorch_lightning.callbacks import Timer

    return [Timer(duration=timedelta(seconds=seconds), interval="step")]


def build_data(cfg: ClassifyConfig) -> AudioDataModule:
    return AudioDataModule(cfg.data, eval_align="center")


def report_test(module: AudioClassifierModule, labels: list[str], run_dir: Path, bad: BadFiles | None) -> dict:
    report = classification_report(module.test_true, module.test_pred, labels)
    plot_confusion_matrix(report["confusion_matrix"], labels, run_dir / "confusion_matrix.png",
                          title=f"test accuracy {report['accuracy']:.4f}")  # fmt: skip
    (run_dir / "classification_report.txt").write_text(report["text"])
    metrics = {"test/accuracy": report["accuracy"], "test/macro_f1": report["macro_f1"],
               "test/num_examples": len(module.test_true), "skipped_bad_files": len(bad) if bad else 0}  # fmt: skip
    metrics.update({f"test/f1/{k}": v["f1"] for k, v in report["per_class"].items()})
    log.info("test report\n%s", report["text"])
    return metrics


def predict(run: str, folder: str, batch_size: int = 64) -> list[tuple[str, str, float]]:
    """Print `path<TAB>label<TAB>probability` for every audio file in `folder`.

    `run` is a classification run directory (its best checkpoint is used, else last.ckpt) or a .ckpt file in one.
    """
    ckpt = Path(run)
    run_dir = ckpt.parent.parent if ckpt.suffix == ".ckpt" else ckpt
    if ckpt.suffix != ".ckpt":
        best = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
        ckpt = best[-1] if best else run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file() or not (run_dir / "labels.json").is_file():
        raise FileNotFoundError(f"{run}: no checkpoint/labels.json of a recipes.audio_classify run found")
    if not Path(folder).is_dir():
        raise NotADirectoryError(f"{folder}: not a folder of audio files")
    cfg: ClassifyConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ClassifyConfig),
                                                              OmegaConf.load(run_dir / "config.yaml")))  # fmt: skip
    labels = json.loads((run_dir / "labels.json").read_text())
    model = AudioClassifier(_encoder_config(run_dir), len(labels), pooling=cfg.model.pooling,
                            bidirectional=cfg.model.bidirectional)  # fmt: skip
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    model.eval()
    # Every visible file is tried: one that libsndfile cannot decode is reported (and skipped), not silently ignored.
    bad = BadFiles()
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
    records = [AudioRecord(path, label="", origin=str(path)) for path in files]
    records, waves = load_waveforms(records, cfg.data.sample_rate, cfg.data.normalization, bad)
    tokenizer, results = MuLawTokenizer(), []
    with torch.no_grad():
        for start in range(0, len(waves), batch_size):
            chunk = waves[start : start + batch_size]
            tokens = torch.stack([tokenizer.encode(place(w, cfg.data.num_samples, "center")[0]) for w in chunk])
            probs = model(tokens).softmax(-1)
            for record, p in zip(records[start : start + batch_size], probs):
                results.append((str(record.path), labels[int(p.argmax())], float(p.max())))
    for path, label, prob in results:
        print(f"{path}\t{label}\t{prob:.3f}")  # noqa: T201 - the command's output
    if bad:
        print(f"skipped {len(bad)} bad file(s):\n  " + "\n  ".join(bad.messages), file=sys.stderr)  # noqa: T201
    return results


def _encoder_config(run_dir: Path) -> AudioModelConfig:
    raw = json.loads((run_dir / "encoder_config.json").read_text())
    return AudioModelConfig(backbone=MambaConfig(**raw.pop("backbone")), **raw)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if argv and argv[0] == "predict":
        if len(argv) != 3:
            raise SystemExit("usage: python -m recipes.audio_classify predict RUN_DIR_OR_CKPT FOLDER")
        predict(argv[1], argv[2])
        return {}
    cfg: ClassifyConfig = load_config(ClassifyConfig, CONFIG_DIR, argv, job="audio_classify")
    pl.seed_everything(cfg.seed, workers=True)
    run_dir = prepare_run_dir(cfg, cfg.run_dir, "audio_classify", resume=cfg.ckpt_path == "last")
    data = build_data(cfg)
    data.setup("fit")
    model = build_model(cfg, len(data.labels))
    if cfg.data.num_samples % model.config.frame:
        raise ValueError(
            f"data.num_samples={cfg.data.num_samples} must be a multiple of the frame {model.config.frame}"
        )
    if is_global_zero():
        (run_dir / "labels.json").write_text(json.dumps(data.labels) + "\n")
        (run_dir / "encoder_config.json").write_text(json.dumps(asdict(model.config), indent=2) + "\n")
    module = AudioClassifierModule(model, cfg.optim)
    budget = time_limit(cfg.max_time_s)
    trainer = build_trainer(
        cfg.trainer, run_dir, monitor="val/acc", mode="max", extra_callbacks=budget, tokens_key="tokens"
    )
    trainer.fit(module, datamodule=data, ckpt_path=resolve_ckpt_path(cfg.ckpt_path, run_dir))
    has_best = bool(trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path)
    trainer.test(module, datamodule=data, ckpt_path="best" if has_best else None)
    if not trainer.is_global_zero:  # every rank holds the gathered test predictions; one writes the report
        return {}
    metrics = report_test(module, data.labels, run_dir, data.bad) | throughput_metrics(trainer)
    write_metrics_json(run_dir, metrics)
    if data.bad:
        log.warning("skipped %d bad file(s):\n  %s", len(data.bad), "\n  ".join(data.bad.messages))
    log.info("test accuracy %.4f, macro-F1 %.4f; run directory %s", metrics["test/accuracy"],
             metrics["test/macro_f1"], run_dir)  # fmt: skip
    return metrics


if __name__ == "__main__":
    main()
