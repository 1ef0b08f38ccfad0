"""Pretrain a Mamba language model on text; report loss, perplexity and bits per character.

The default corpus is tinyshakespeare (found through `MAMBALAB_DATA`, else downloaded), split nanoGPT's way (first
90% of the characters train, the last 10% validate); the WikiText-2 validation file is evaluated too. A byte-level
BPE is trained on the training split only. At the end the best checkpoint (by validation loss) is evaluated on every
evaluation set and exported with `save_pretrained` plus its `tokenizer.json`, ready for `python -m recipes.generate`.

    python -m recipes.lm_pretrain                                   # small CPU-sized default
    python -m recipes.lm_pretrain --config gpu                      # ~10M parameters, a few minutes on one GPU
    python -m recipes.lm_pretrain --config gpu tokenizer.vocab_size=258        # byte-level instead of BPE
    python -m recipes.lm_pretrain data.files='[a.txt,b.txt]' data.extra_eval='[]'
    python -m recipes.lm_pretrain --config gpu ckpt_path=last       # resume the newest run
    python -m recipes.lm_pretrain --config 130m trainer.devices=2 trainer.strategy=fsdp   # 130M shape, 2 GPUs
    python -m recipes.generate --model runs/lm_pretrain/<time>/model --prompt "ROMEO:"

Run directory: config.yaml, git_revision.txt, metrics.csv, checkpoints/, loss_curve.png, metrics.json, model/,
throughput.json (tokens/s and peak GPU memory after warm-up, also in metrics.json).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import torch
from torch import nn

from backbone import MambaConfig
from backbone.init import optimizer_groups
from tasks.cuda_graph_lightning import CUDAGraphTraining
from tasks.data_sources import cache_root, resolve
from tasks.distributed import throughput_metrics, unsharded_state_dict
from tasks.language.data import (
    IGNORE_INDEX,
    NAMED_TEXT,
    NAMED_TOKENIZERS,
    TextDataModule,
    TokenizedText,
    load_corpus,
    read_text,
    tokenize_cached,
)
from tasks.language.metrics import LanguageModelMetrics, bits_per_char, streamed_nll, token_nll
from tasks.language.tokenizer import TextTokenizer
from tasks.lm import MambaLM, MambaLMConfig
from tasks.lm_loss import linear_token_nll
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

log = logging.getLogger("recipes.lm_pretrain")
JOB = "lm_pretrain"
# From this vocabulary size on, training fuses the LM head into the cross-entropy (tasks/lm_loss.py): the logits of a
# 50k vocabulary are the largest activation of a 130M model, while a byte vocabulary's are small and the plain path
# (one matmul, one cross-entropy) is simpler.
FUSED_HEAD_MIN_VOCAB = 4096
CONFIG_DIR = Path(__file__).resolve().parent / "configs" / JOB


@dataclass
class TokenizerConfig:
    kind: Literal["bpe", "file"] = "bpe"  # bpe: train a byte-level BPE on the training split; file: load `path`
    vocab_size: int = 2048  # bpe only; 258 = bytes + 2 special tokens (no merges)
    min_frequency: int = 2
    path: str | None = None  # kind=file: a tokenizer.json, or a named one (gpt-neox-20b, found like named data)


@dataclass
class DataConfig:
    corpus: str = "tinyshakespeare"  # a named text dataset, used when `files` is empty
    files: list[str] = field(default_factory=list)  # text files to train on instead of `corpus`
    val_fraction: float = 0.1  # the last fraction of each file's characters validates
    document_separator: str | None = None  # regex splitting files into documents; None: a file is one document
    extra_eval: list[str] = field(default_factory=lambda: ["wikitext2_valid"])  # named datasets or paths, scored whole
    seq_len: int = 256
    batch_size: int = 32
    eval_batch_size: int = 64
    num_workers: int = 0
    train_windows_per_epoch: int | None = None  # default: one pass worth of windows (few steps on a small corpus)
    # After training, also score these evaluation sets with the best checkpoint as one stream, the recurrent state
    # carried across chunks (every token sees all the text before it; see `streamed_nll`):
    # `<name>/bits_per_char_streamed`.
    stream_eval: list[str] = field(default_factory=lambda: ["val"])
    stream_chunk_len: int = 1024
    cache_dir: str | None = None  # token caches; default $MAMBALAB_CACHE/tokens


@dataclass
class ModelConfig:
    d_model: int = 128
    n_layer: int = 4
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dropout: float = 0.0  # on the embeddings, each block's mixer output and the final hidden states
    mixer_dropout: float = 0.0  # inside each mixer, on the convolution's output (the SSM's input)
    drop_path: float = 0.0  # stochastic depth: the last block's rate, 0 for the first, linear in between


@dataclass
class OptimConfig:
    lr: float = 2e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decay from lr to lr * min_lr_ratio at the last step


@dataclass
class LMPretrainConfig:
    seed: int = 0
    run_dir: str | None = None
    ckpt_path: str | None = None  # "last" resumes (the newest run, or run_dir's); or a checkpoint path
    time_budget_minutes: float | None = None  # fit max_steps to this much training time (measured after warm-up)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(max_steps=300, val_check_interval=100))


class LMPretrainModule(CUDAGraphTraining, pl.LightningModule):
    """Next-token cross-entropy on packed windows; per evaluation set: loss, perplexity, bits per character."""

    def __init__(self, model_cfg: dict, optim_cfg: dict, vocab_size: int, evals: dict[str, float], max_steps: int):
        super().__init__()
        self.save_hyperparameters()
        self.dropout = nn.Dropout(model_cfg["dropout"])  # the backbone applies the same rate inside each block
        self.model = MambaLM(MambaLMConfig(MambaConfig(**model_cfg), vocab_size=vocab_size))
        self.optim_cfg = optim_cfg
        self.eval_names = list(evals)
        # `tokens_per_char` of each evaluation text turns its mean loss into bits per character.
        self.eval_metrics = nn.ModuleList(LanguageModelMetrics(tpc) for tpc in evals.values())
        self.total_steps = max_steps  # the LR schedule's length; the time-budget callback may shorten it

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """`[B, L]` -> `[B, L, D]`: the backbone with dropout around (and inside) it, before the LM head."""
        return self.dropout(self.model.backbone(self.dropout(self.model.embedding(input_ids))))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """`[B, L]` -> logits `[B, L, V]`; `MambaLM.forward` with dropout."""
        return self.model.lm_head(self.hidden_states(input_ids))

    def next_token_loss(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """`[B, L]` ids and targets -> the mean cross-entropy over scored targets (0-dim, fp32)."""
        if self.model.config.padded_vocab_size >= FUSED_HEAD_MIN_VOCAB:  # logits [B, L, V] would dominate memory
            hidden = self.hidden_states(input_ids)
            nats, count = linear_token_nll(hidden, self.model.lm_head.weight, targets, ignore_index=IGNORE_INDEX)
        else:
            nats, count = token_nll(self(input_ids), targets)
        return nats / count.clamp(min=1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # Eager, or replayed from a CUDA graph with trainer.cuda_graph=true (tasks/cuda_graph_lightning.py).
        loss = self.training_loss(self.next_token_loss, batch["input_ids"], batch["targets"])
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)  # the global batch's loss under DDP
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.eval_metrics[dataloader_idx].update(*token_nll(self(batch["input_ids"]), batch["targets"]))

    def on_validation_epoch_end(self) -> None:
        for name, metric in zip(self.eval_names, self.eval_metrics):
            if metric.update_count == 0:
                continue
            values = metric.compute()
            self.log(f"{name}/loss", values["loss"], prog_bar=name == self.eval_names[0])
            self.log(f"{name}/perplexity", values["perplexity"])
            self.log(f"{name}/bits_per_char", values["bits_per_char"], prog_bar=name == self.eval_names[0])
            metric.reset()

    def configure_optimizers(self):
        cfg = self.optim_cfg
        return adamw_warmup_cosine(
            optimizer_groups(self.model, cfg["weight_decay"]), lr=cfg["lr"], betas=cfg["betas"],
            warmup=cfg["warmup_steps"], total_steps=lambda: self.total_steps, floor=cfg["min_lr_ratio"],
        )  # fmt: skip


def build_tokenizer(cfg: TokenizerConfig, train_docs: list[str], cache_dir: Path) -> TextTokenizer:
    """Load `cfg.path`, or train a BPE on the training documents (cached by corpus and settings)."""
    if cfg.kind == "file":
        if not cfg.path:
            raise ValueError("tokenizer.kind=file needs tokenizer.path (a tokenizer.json)")
        named = NAMED_TOKENIZERS.get(cfg.path)
        return TextTokenizer.from_file(resolve(named) if named else cfg.path)
    digest = hashlib.sha256(f"{cfg.vocab_size}:{cfg.min_frequency}".encode())
    for doc in train_docs:
        digest.update(hashlib.sha256(doc.encode()).digest())
    path = cache_dir / f"bpe-{cfg.vocab_size}-{digest.hexdigest()[:16]}.json"
    if path.is_file():
        return TextTokenizer.from_file(path)
    lines = (line for doc in train_docs for line in doc.splitlines(keepends=True))
    tokenizer = TextTokenizer.train_bpe(lines, cfg.vocab_size, min_frequency=cfg.min_frequency)
    # Write then rename: processes started together (torchrun, SLURM) may all train it and read it back.
    os.replace(tokenizer.save(path.with_suffix(f".{os.getpid()}.tmp.json")), path)
    log.info("trained a %d-token byte-level BPE -> %s", tokenizer.vocab_size, path)
    return tokenizer


def build_data(cfg: LMPretrainConfig) -> tuple[TextDataModule, TextTokenizer]:
    data = cfg.data
    if data.files:
        files = [Path(f) for f in data.files]
    elif data.corpus in NAMED_TEXT:
        files = [resolve(NAMED_TEXT[data.corpus])]
    else:
        raise ValueError(f"data.corpus={data.corpus!r} is not a named text dataset ({sorted(NAMED_TEXT)}); "
                         "give data.files instead")  # fmt: skip
    cache_dir = Path(data.cache_dir) if data.cache_dir else cache_root() / "tokens"
    train_docs, val_docs = load_corpus(files, data.val_fraction, data.document_separator)
    if not val_docs:
        raise ValueError(f"data.val_fraction={data.val_fraction} leaves no validation text in {files}")
    tokenizer = build_tokenizer(cfg.tokenizer, train_docs, cache_dir)
    corpus = Path(files[0]).stem
    train = tokenize_cached(f"{corpus}-train", train_docs, tokenizer, cache_dir)
    evals: dict[str, TokenizedText] = {"val": tokenize_cached(f"{corpus}-val", val_docs, tokenizer, cache_dir)}
    for item in data.extra_eval:
        path = resolve(NAMED_TEXT[item]) if item in NAMED_TEXT else resolve_path(item)
        name = item.removesuffix("_valid") if item in NAMED_TEXT else Path(item).stem
        docs = load_corpus([path], 0.0, data.document_separator)[0]
        evals[name] = tokenize_cached(name, docs, tokenizer, cache_dir)
    unknown = sorted(set(data.stream_eval) - set(evals))
    if unknown:  # checked now, not after training
        raise ValueError(f"data.stream_eval: {unknown} are not evaluation sets ({sorted(evals)})")
    module = TextDataModule(
        train, evals, seq_len=data.seq_len, batch_size=data.batch_size, eval_batch_size=data.eval_batch_size,
        eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, num_workers=data.num_workers,
        train_windows_per_epoch=data.train_windows_per_epoch,
    )  # fmt: skip
    return module, tokenizer


def resolve_path(item: str) -> Path:
    path = Path(item)
    if not path.is_file():
        raise FileNotFoundError(f"data.extra_eval: {item!r} is neither a named text dataset ({sorted(NAMED_TEXT)}) "
                                "nor an existing file")  # fmt: skip
    read_text(path)  # fail now, naming the line, rather than mid-run
    return path


def build_module(cfg: LMPretrainConfig, datamodule: TextDataModule, tokenizer: TextTokenizer) -> LMPretrainModule:
    evals = {name: t.tokens_per_char for name, t in datamodule.evals.items()}
    return LMPretrainModule(asdict(cfg.model), asdict(cfg.optim), tokenizer.vocab_size, evals, cfg.trainer.max_steps)


def evaluate_streamed(model: MambaLM, datamodule: TextDataModule, data: DataConfig, eos_id: int) -> dict[str, float]:
    """`<name>/bits_per_char_streamed` for each of `data.stream_eval` (on the GPU when there is one)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    results = {}
    for name in data.stream_eval:
        text = datamodule.evals[name]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            nats, _ = streamed_nll(model, text.tokens, eos_id, chunk_len=data.stream_chunk_len)
        results[f"{name}/bits_per_char_streamed"] = bits_per_char(nats, text.n_chars)
    return results


def main(argv: list[str] | None = None) -> dict:
    import sys

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg: LMPretrainConfig = load_config(LMPretrainConfig, CONFIG_DIR, sys.argv[1:] if argv is None else argv, JOB)
    pl.seed_everything(cfg.seed, workers=True)
    run_dir = prepare_run_dir(cfg, cfg.run_dir, JOB, resume=cfg.ckpt_path == "last")
    datamodule, tokenizer = build_data(cfg)
    module = build_module(cfg, datamodule, tokenizer)
    n_params = sum(p.numel() for p in module.model.parameters())
    log.info("model: %.2fM parameters, vocab %d; run dir %s", n_params / 1e6, tokenizer.vocab_size, run_dir)
    callbacks = [TimeBudget(cfg.time_budget_minutes, probe=(20, 60), reserve=0.1)] if cfg.time_budget_minutes else []
    trainer = build_trainer(cfg.trainer, run_dir, monitor="val/loss", mode="min", extra_callbacks=callbacks,
                            tokens_key="input_ids")  # fmt: skip
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resolve_ckpt_path(cfg.ckpt_path, run_dir))
    train_s = time.perf_counter() - start

    best = trainer.checkpoint_callback.best_model_path or None
    metrics = {}
    for results in trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False):
        metrics |= {k.split("/dataloader_idx_")[0]: v for k, v in results.items()}
    metrics |= {
        "n_parameters": n_params,
        "vocab_size": tokenizer.vocab_size,
        "steps": trainer.global_step,
        "train_seconds": round(train_s, 1),
        "best_checkpoint": best,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    metrics |= {f"{name}/tokens_per_char": t.tokens_per_char for name, t in datamodule.evals.items()}
    metrics |= throughput_metrics(trainer)
    # The best checkpoint's weights (trainer.validate loaded them), unsharded: every rank takes part under FSDP.
    weights = unsharded_state_dict(trainer)
    if not trainer.is_global_zero:  # under DDP/FSDP every rank gets here; one writes
        return metrics
    model = MambaLM(module.model.config)
    model.load_state_dict(weights)
    metrics |= evaluate_streamed(model, datamodule, cfg.data, tokenizer.eos_id)
    write_metrics_json(run_dir, metrics)
    export = model.save_pretrained(run_dir / "model")
    tokenizer.save(export / "tokenizer.json")
    log.info("evaluation: %s; exported %s", {k: v for k, v in metrics.items() if "bits_per_char" in k}, export)
    return metrics


if __name__ == "__main__":
    main()
