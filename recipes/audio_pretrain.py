"""Autoregressive waveform modeling on 8-bit mu-law tokens; reports bits per sample and writes generated WAVs.

Usage (from the repository root)::

    python -m recipes.audio_pretrain                                   # FSDD training recordings, GPU config
    python -m recipes.audio_pretrain --config tiny                     # CPU smoke run
    python -m recipes.audio_pretrain data.source=folder data.path=my_wavs 'data.pattern=(?P<label>.*)\\.wav'
    python -m recipes.audio_pretrain run_dir=runs/audio_pretrain/<stamp> ckpt_path=last   # resume

Every frame of `prod(model.strides)` samples predicts the 256-level distribution of each sample of the next frame
(see `tasks.audio.model.AudioLM`); `model.strides=[]` gives the exact sample-level model. Validation reports
`val/bps` (bits per sample; 8.0 is a uniform guess). The run directory gets `pretrained/` (config.json +
model.safetensors, the input of `recipes.audio_classify init_from=...`), `samples/*.wav` and metrics.json.
Only the training split's recordings are used for training (labels are ignored); validation uses the val split.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from backbone import MambaConfig
from backbone.init import optimizer_groups
from tasks.audio.data import AudioDataConfig, AudioDataModule
from tasks.audio.io import write_wav
from tasks.audio.metrics import bits_per_sample
from tasks.audio.model import AudioLM, AudioModelConfig
from tasks.audio.tokenizer import MuLawTokenizer
from tasks.distributed import throughput_metrics, unsharded_state_dict
from tasks.runs import (
    TrainerConfig,
    adamw_warmup_cosine,
    build_trainer,
    load_config,
    prepare_run_dir,
    resolve_ckpt_path,
    write_metrics_json,
)

log = logging.getLogger("recipes.audio_pretrain")
CONFIG_DIR = Path(__file__).parent / "configs" / "audio_pretrain"


@dataclass
class ModelConfig:
    d_model: int = 128
    n_layer: int = 4
    d_state: int = 16
    expand: int = 2
    embed_dim: int = 32
    strides: list[int] = field(default_factory=lambda: [4, 4])


@dataclass
class OptimConfig:
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100


@dataclass
class GenerateConfig:
    num_clips: int = 2  # continuations written after training (0: none)
    prompt_samples: int = 1024  # taken from the start of validation clips
    num_samples: int = 4096  # new samples per clip
    temperature: float = 1.0


@dataclass
class PretrainConfig:
    data: AudioDataConfig = field(default_factory=lambda: AudioDataConfig(num_samples=4096, augment=False))
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    run_dir: str | None = None
    ckpt_path: str | None = None  # "last" or a checkpoint path, to resume
    max_time_s: float | None = None  # stop training after this many seconds (then evaluate), on top of max_steps
    seed: int = 0


class AudioLMModule(pl.LightningModule):
    """Next-frame negative log-likelihood on mu-law tokens; padding (silence after short clips) is masked out."""

    def __init__(self, model: AudioLM, optim: OptimConfig) -> None:
        super().__init__()
        self.model, self.optim = model, optim

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        loss, count = self.model.loss(batch["tokens"], batch["mask"])
        # Weighting each batch by its number of predicted samples makes the epoch value a true per-sample mean, over
        # all ranks with sync_dist (the padding of the evaluation shards predicts nothing, so it weighs nothing).
        weight = max(1, int(count)) if stage == "train" else int(count)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=weight, on_step=stage == "train", on_epoch=True,
                 sync_dist=True)  # fmt: skip
        self.log(f"{stage}/bps", loss / math.log(2), prog_bar=stage != "train", batch_size=weight, on_epoch=True,
                 sync_dist=True)  # fmt: skip
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self):
        total = max(1, self.trainer.estimated_stepping_batches)
        return adamw_warmup_cosine(
            optimizer_groups(self.model, self.optim.weight_decay), lr=self.optim.lr, betas=(0.9, 0.95),
            warmup=min(self.optim.warmup_steps, total // 10 + 1), total_steps=lambda: total, floor=0.1,
        )  # fmt: skip


def build_model(cfg: PretrainConfig) -> AudioLM:
    backbone = MambaConfig(d_model=cfg.model.d_model, n_layer=cfg.model.n_layer, d_state=cfg.model.d_state,
                           expand=cfg.model.expand)  # fmt: skip
    config = AudioModelConfig(backbone, embed_dim=cfg.model.embed_dim, strides=list(cfg.model.strides))
    if cfg.data.num_samples % config.frame or cfg.data.num_samples < 2 * config.frame:
        raise ValueError(f"data.num_samples={cfg.data.num_samples} must be a multiple of the frame {config.frame} "
                         "and hold at least two frames")  # fmt: skip
    return AudioLM(config)


def time_limit(seconds: float | None) -> list[pl.Callback]:
    """A wall-clock budget for training; Lightning stops cleanly (checkpoints, then evaluation) when it runs out."""
    if not seconds:
        return []
    from datetime import timedelta

    from pytorch_lightning.callbacks import Timer

    return [Timer(duration=timedelta(seconds=seconds), interval="step")]


def build_data(cfg: PretrainConfig) -> AudioDataModule:
    # Clips start at the beginning for evaluation (so every clip's onset is modeled); training crops are random.
    return AudioDataModule(cfg.data, eval_align="start", augment=False)


@torch.no_grad()
def evaluate_bps(model: AudioLM, loader: DataLoader, device: torch.device) -> float:
    """Bits per predicted (non-padding) sample over a whole loader."""
    total, count = 0.0, 0.0
    for batch in loader:
        loss, n = model.loss(batch["tokens"].to(device), batch["mask"].to(device))
        total += float(loss) * float(n)
        count += float(n)
    return bits_per_sample(total / max(count, 1.0))


def write_samples(model: AudioLM, data: AudioDataModule, cfg: PretrainConfig, run_dir: Path) -> list[Path]:
    """Continue the openings of validation clips; write prompt + continuation as 16-bit WAVs."""
    gen, frame = cfg.generate, model.config.frame
    if gen.num_clips <= 0:
        return []
    dataset = data.datasets["val"] or data.datasets["test"]
    prompt_len = max(frame, gen.prompt_samples // frame * frame)
    prompts = torch.stack([dataset[i]["tokens"][:prompt_len] for i in range(min(gen.num_clips, len(dataset)))])
    device = next(model.parameters()).device
    tokens = model.generate(prompts.to(device), gen.num_samples, temperature=gen.temperature).cpu()
    tokenizer, paths = MuLawTokenizer(), []
    for i, clip in enumerate(tokens):
        paths.append(write_wav(run_dir / "samples" / f"sample_{i}.wav", tokenizer.decode(clip), cfg.data.sample_rate))
    log.info("wrote %d generated clips (prompt %d + %d samples) to %s", len(paths), prompt_len,
             tokens.shape[1] - prompt_len, run_dir / "samples")  # fmt: skip
    return paths


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg: PretrainConfig = load_config(PretrainConfig, CONFIG_DIR, argv, job="audio_pretrain")
    pl.seed_everything(cfg.seed, workers=True)
    run_dir = prepare_run_dir(cfg, cfg.run_dir, "audio_pretrain", resume=cfg.ckpt_path == "last")
    data = build_data(cfg)
    data.setup("fit")
    module = AudioLMModule(build_model(cfg), cfg.optim)
    budget = time_limit(cfg.max_time_s)
    trainer = build_trainer(
        cfg.trainer, run_dir, monitor="val/bps", mode="min", extra_callbacks=budget, tokens_key="tokens"
    )
    trainer.fit(module, datamodule=data, ckpt_path=resolve_ckpt_path(cfg.ckpt_path, run_dir))
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    # The final weights, unsharded (a collective under FSDP); then one process evaluates and writes.
    final = unsharded_state_dict(trainer)
    if not trainer.is_global_zero:
        return {}
    if best:
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        final = {k.removeprefix("model."): v for k, v in state.items()}
    model = build_model(cfg)
    model.load_state_dict(final)
    model.eval()
    model.save_pretrained(run_dir / "pretrained")
    device = next(model.parameters()).device
    split = data.datasets[data.eval_split]  # all of it, in this process
    eval_loader = DataLoader(split, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers)
    metrics = {"val/bps": evaluate_bps(model, eval_loader, device), "best_checkpoint": best,
               "skipped_bad_files": len(data.bad) if data.bad else 0}  # fmt: skip
    metrics["samples"] = [str(p) for p in write_samples(model, data, cfg, run_dir)]
    metrics |= throughput_metrics(trainer)
    write_metrics_json(run_dir, metrics)
    if data.bad:
        log.warning("skipped %d bad file(s):\n  %s", len(data.bad), "\n  ".join(data.bad.messages))
    log.info("validation %.4f bits per sample; pretrained model in %s", metrics["val/bps"], run_dir / "pretrained")
    return metrics


if __name__ == "__main__":
    main()
