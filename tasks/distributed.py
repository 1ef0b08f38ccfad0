"""What a recipe needs beyond Lightning's defaults to run on several devices (`trainer.devices=N`, `num_nodes`, DDP
or FSDP) and report the same numbers as on one.

* `build_strategy`: FSDP with one unit per `MambaBlock` and full (unsharded) checkpoints, which load on any number
  of devices. One wrapper serves every `fit`/`validate`/`test` call on a module: Lightning would leave the root
  unwrapped on the second call (Lightning-AI/pytorch-lightning#19015) and crash on the sharded embedding.
  `gradient_clip_val` works (by the norm over all shards), where Lightning's FSDP refuses it, and weight decay
  still skips biases and norms (`backbone.init.optimizer_groups` would otherwise see only flattened 1-D shards).
  `ModelOrderOptimizerState` keys every checkpoint's optimizer state the way FSDP reads it, so a checkpoint of
  one device or DDP resumes under FSDP.
* `PerRankSeed`: from `fit` on, ranks > 0 draw from their own random stream, so random windows, crops,
  augmentation and dropout differ between ranks (with one seed everywhere, every rank would draw the same ones).
* Evaluation scores every item exactly once. Lightning's automatic `DistributedSampler` evens out the ranks by
  repeating the first items, which sums over ranks would count twice. Token sums use `eval_shards` instead, which
  pads with items that score nothing; per-item outputs (classifiers) go through `gather_ordered`, which drops the
  repeats. Every rank runs the same number of batches either way, as FSDP needs (its forward is collective).
* `unsharded_state_dict`: the full weights for `save_pretrained`, gathered on every rank (FSDP holds shards).
* `Throughput`: tokens/s and samples/s per device and in all, and peak CUDA memory per rank, after a warm-up.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.precision import FSDPPrecision
from pytorch_lightning.strategies import FSDPStrategy
from torch.utils.data import Dataset, DistributedSampler

from backbone.init import mark_weight_decay

log = logging.getLogger(__name__)


class _FSDPPrecision(FSDPPrecision):
    """Lightning's FSDP precision plugin, plus clipping by the gradient norm over all shards (Lightning refuses
    `gradient_clip_val` under FSDP: it lacks the root module that `FullyShardedDataParallel.clip_grad_norm_` needs)."""

    strategy: FSDPStrategy

    def clip_grad_by_norm(self, optimizer, clip_val: float | int) -> None:
        self.strategy.model.clip_grad_norm_(clip_val)


class _FSDPStrategy(FSDPStrategy):
    """Lightning's FSDP strategy, wrapping a LightningModule once for all the trainer's calls on it, and clipping
    gradients by their global norm."""

    @property
    def precision_plugin(self) -> FSDPPrecision:
        return FSDPStrategy.precision_plugin.fget(self)

    @precision_plugin.setter
    def precision_plugin(self, plugin: FSDPPrecision | None) -> None:
        if type(plugin) is FSDPPrecision:
            plugin = _FSDPPrecision(plugin.precision)
            plugin.strategy = self
        FSDPStrategy.precision_plugin.fset(self, plugin)

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        wrapped = getattr(self, "_wrapped", None)
        if wrapped is not None and wrapped.module is model:
            return wrapped
        mark_weight_decay(model)  # sharding flattens every parameter to 1-D; the optimizer groups need real shapes
        self._wrapped = super()._setup_model(model)
        return self._wrapped


def build_strategy(name: str):
    """Lightning strategy by name; `fsdp` shards at the residual-block level (one FSDP unit per `MambaBlock`)."""
    if name != "fsdp":
        return name
    from backbone.block import MambaBlock

    return _FSDPStrategy(auto_wrap_policy={MambaBlock}, sharding_strategy="FULL_SHARD", state_dict_type="full")


class ModelOrderOptimizerState(pl.Callback):
    """Numbers the parameters of saved optimizer states in model order, as FSDP's full checkpoints do.

    A plain optimizer numbers them in its own order (all decaying parameters, then the others); FSDP reads integer
    keys as positions in `model.parameters()`. With one numbering in every checkpoint, a checkpoint written by one
    device or DDP resumes under FSDP too (and the other way round: loading pairs parameters by position anyway).
    """

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if isinstance(trainer.strategy, FSDPStrategy):
            return
        position = {id(p): i for i, p in enumerate(pl_module.parameters())}
        for optimizer, state in zip(trainer.optimizers, checkpoint.get("optimizer_states", [])):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            key = {i: position[id(p)] for i, p in enumerate(params)}
            state["state"] = {key[i]: v for i, v in state["state"].items()}
            for group in state["param_groups"]:
                group["params"] = [key[i] for i in group["params"]]


class PerRankSeed(pl.Callback):
    """Reseeds ranks > 0 (from the run's seed and the rank) when fitting starts; rank 0 keeps the single-device
    stream. The model is built before, from the common seed, so every rank starts from the same weights."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or trainer.global_rank == 0:
            return
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        state = np.random.SeedSequence([seed, trainer.global_rank]).generate_state(1)[0]
        # Not `seed_everything`: it would change PL_GLOBAL_SEED, which seeds the shuffle of Lightning's
        # DistributedSampler; that permutation must be the same on every rank.
        random.seed(int(state))
        np.random.seed(int(state))
        torch.manual_seed(int(state))


class _Padded(Dataset):
    def __init__(self, dataset: Dataset, length: int, blank: Any):
        self.dataset, self.length, self.blank, self.n = dataset, length, blank, len(dataset)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        return self.dataset[index] if index < self.n else self.blank


def eval_shards(
    dataset: Dataset, trainer: pl.Trainer | None, blank: Callable[[Any], Any]
) -> tuple[Dataset, DistributedSampler | None]:
    """`(dataset, sampler)` for an evaluation DataLoader.

    One process: `(dataset, None)`. Several: the dataset padded to a multiple of the world size with
    `blank(dataset[0])` (an item that scores nothing: all targets ignored, an empty mask) and a sampler that gives
    rank r items r, r + W, r + 2W, ...; each real item is scored once and every rank runs the same number of batches.
    """
    if trainer is None or trainer.world_size == 1:
        return dataset, None
    world = trainer.world_size
    padded = _Padded(dataset, -(-len(dataset) // world) * world, blank(dataset[0]))
    return padded, DistributedSampler(padded, num_replicas=world, rank=trainer.global_rank, shuffle=False)


def gather_ordered(module: pl.LightningModule, tensor: torch.Tensor, stage: str = "val") -> torch.Tensor:
    """One rank's outputs of an evaluation pass `[N_r, ...]` -> all ranks' `[N, ...]`, in dataset order.

    `stage` ("val" or "test") names the trainer's loader the outputs came from. It must hand rank r the items r,
    r + W, r + 2W, ... (Lightning's `DistributedSampler(shuffle=False)` or `eval_shards`); positions past the dataset's
    end are their padding and are dropped, so N is the dataset's size (or less, under `limit_*_batches`).
    Collective under several processes: every rank must call it. Returns a CPU tensor.
    """
    loader = module.trainer.val_dataloaders if stage == "val" else module.trainer.test_dataloaders
    dataset = (loader[0] if isinstance(loader, (list, tuple)) else loader).dataset
    n = dataset.n if isinstance(dataset, _Padded) else len(dataset)
    if module.trainer.world_size == 1:
        return tensor[:n]
    gathered = module.all_gather(tensor.to(module.device)).cpu()  # [W, N_r, ...]
    return gathered.transpose(0, 1).flatten(0, 1)[:n]


def unsharded_state_dict(trainer: pl.Trainer, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """The trained LightningModule's full weights under `prefix` (the prefix removed), as `save_pretrained` needs.

    Collective under FSDP (the shards are gathered, on CPU, to rank 0): every rank must call it; ranks > 0 may get
    an empty dict. Call it after the trainer's last `fit`/`validate`/`test`, whose weights it returns.
    """
    state = trainer.strategy.lightning_module_state_dict()
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


class Throughput(pl.Callback):
    """Training throughput and peak CUDA memory, measured from optimizer step `warmup_steps` to the end of training.

    Time spent in validation and at epoch ends (checkpoint writes) is left out. `tokens_key` names the batch entry
    whose elements are tokens (`input_ids` `[B, L]` counts B * L; audio `tokens` counts samples); samples are the
    first dimension of that entry (else of the batch's first tensor). Per step this only adds up shapes: the CUDA
    streams are synchronized only when the window opens, pauses, resumes and closes.

    At the end of training (a collective) `results` holds, for all ranks together:
    `throughput/{tokens,samples}_per_s`, per device `throughput/{tokens,samples}_per_s_per_device`,
    `throughput/peak_allocated_gib` and `throughput/peak_reserved_gib` (the largest rank's, and `..._per_rank`
    lists), `throughput/steps`, `throughput/seconds`, `throughput/devices`; rank 0 also writes them to
    `throughput.json` in the trainer's `default_root_dir` (the run directory), even if a later step of the recipe
    fails.
    """

    def __init__(self, warmup_steps: int = 10, tokens_key: str | None = None) -> None:
        self.warmup_steps, self.tokens_key = warmup_steps, tokens_key
        self.results: dict[str, Any] = {}
        self._reset()

    def _reset(self) -> None:
        self._open = self._running = False
        self._start_step = 0
        self._seconds = 0.0
        self._since = 0.0
        self._tokens = self._samples = 0

    @staticmethod
    def _now(trainer: pl.Trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
        return time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset()
        self.results = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._running or trainer.global_step < self.warmup_steps:
            return
        if not self._open:
            self._open, self._start_step = True, trainer.global_step
            if trainer.strategy.root_device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(trainer.strategy.root_device)
        self._running, self._since = True, self._now(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._running:
            return
        entry = batch.get(self.tokens_key) if self.tokens_key and isinstance(batch, dict) else None
        if entry is None:
            entry = next(t for t in _tensors(batch))
        self._tokens += entry.numel()
        self._samples += entry.shape[0]

    def _pause(self, trainer: pl.Trainer) -> None:
        if self._running:
            self._seconds += self._now(trainer) - self._since
            self._running = False

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause(trainer)
        device = trainer.strategy.root_device
        cuda = device.type == "cuda"
        peak = [torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)] if cuda else [0, 0]
        steps = trainer.global_step - self._start_step if self._open else 0
        local = torch.tensor([self._tokens, self._samples, self._seconds, steps, *peak], dtype=torch.float64)
        ranks = pl_module.all_gather(local.to(device)).reshape(-1, local.numel()).cpu()  # [W, 6]
        tokens, samples, seconds, steps, allocated, reserved = ranks.T.tolist()
        world = len(tokens)
        if min(steps) <= 0 or max(seconds) <= 0:
            if trainer.is_global_zero:
                log.warning("throughput not measured: training ended before step %d (the warm-up)", self.warmup_steps)
            return
        elapsed = max(seconds)  # the slowest rank sets the pace of all
        self.results = {
            "throughput/devices": world,
            "throughput/steps": int(max(steps)),
            "throughput/seconds": round(elapsed, 3),
            "throughput/tokens_per_s": sum(tokens) / elapsed,
            "throughput/tokens_per_s_per_device": sum(tokens) / elapsed / world,
            "throughput/samples_per_s": sum(samples) / elapsed,
            "throughput/samples_per_s_per_device": sum(samples) / elapsed / world,
        }
        if cuda:
            gib = [[round(b / 2**30, 3) for b in per_rank] for per_rank in (allocated, reserved)]
            self.results |= {
                "throughput/peak_allocated_gib": max(gib[0]),
                "throughput/peak_reserved_gib": max(gib[1]),
                "throughput/peak_allocated_gib_per_rank": gib[0],
                "throughput/peak_reserved_gib_per_rank": gib[1],
            }
        if trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / "throughput.json"
            path.write_text(json.dumps(self.results, indent=2, sort_keys=True) + "\n")
            log.info("throughput: %s", {k: v for k, v in self.results.items() if not k.endswith("_per_rank")})


def _tensors(batch):
    if isinstance(batch, torch.Tensor):
        yield batch
    elif isinstance(batch, dict):
        for value in batch.values():
            yield from _tensors(value)
    elif isinstance(batch, (list, tuple)):
        for value in batch:
            yield from _tensors(value)


def throughput_metrics(trainer: pl.Trainer) -> dict[str, Any]:
    """The `Throughput` callback's results (empty when the run was too short to measure)."""
    return next((dict(cb.results) for cb in trainer.callbacks if isinstance(cb, Throughput)), {})
