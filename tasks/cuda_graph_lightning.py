"""Lightning training steps whose forward, loss and backward replay from one CUDA graph (`trainer.cuda_graph=true`).

An eager Mamba training step on a GPU is partly bound by the host: Python and autograd launch a few hundred small
kernels per layer pass, and at 130M parameters the GPU finishes many of them sooner than the next is launched.
`tasks.cuda_graph_step.CUDAGraphTrainStep` captures the forward, loss and backward once and replays them; Lightning
keeps everything else as it is in automatic optimization: the optimizer step and the learning-rate schedule, gradient
clipping, logging, the EMA of the weights, checkpoints and resuming.

A module opts in by mixing in `CUDAGraphTraining` and computing its training loss through `self.training_loss`:

    class MyModule(CUDAGraphTraining, pl.LightningModule):
        def loss(self, input_ids, targets):                      # tensors in, 0-dim loss out; no .item()
            ...
        def training_step(self, batch, batch_idx):
            loss = self.training_loss(self.loss, batch["input_ids"], batch["targets"])
            self.log("train/loss", loss)
            return loss

and the `CUDAGraphTrainingCallback` (added by `tasks.runs.build_trainer` for `trainer.cuda_graph=true`) turns it on
at the start of `fit`, after a checkpoint has been restored. Without the callback the module trains eagerly, as any
other. How a graphed step differs, and why:

- The first training batch warms up (three forward + backward passes, no optimizer step) and captures; every later
  batch must have its shapes (the recipes' training loaders drop a short last batch).
- Lightning's backward is skipped (the replay has run it) and so is its `zero_grad`: the replay overwrites the
  gradients in the graph's memory. (Lightning also sets them to None before each validation; the replay binds
  them to `.grad` again, which an H100 test caught: without it the steps after a validation did not train.)
- One device only (DDP and FSDP reduce gradients inside the backward, which this does not capture), no gradient
  accumulation (each replay overwrites the gradients), and a CUDA device. The callback checks these at the start
  and names the setting that conflicts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytorch_lightning as pl
import torch

from tasks.cuda_graph_step import CUDAGraphTrainStep

__all__ = ["CUDAGraphTraining", "CUDAGraphTrainingCallback"]

log = logging.getLogger(__name__)


class CUDAGraphTraining:
    """Mixin for a `pl.LightningModule` (put it first in the bases): `training_loss` runs eagerly, or, once
    `CUDAGraphTrainingCallback` has turned the graph on, replays the captured forward, loss and backward."""

    _cuda_graph_on: bool = False
    _cuda_graph_step: CUDAGraphTrainStep | None = None

    def training_loss(self, loss_fn: Callable[..., torch.Tensor], *tensors: torch.Tensor) -> torch.Tensor:
        """`loss_fn(*tensors)`, a 0-dim loss. Eager: the loss itself, and Lightning runs its backward. Graphed: the
        replayed step's loss (a detached copy); its gradients are already in the parameters' `.grad`."""
        if not self._cuda_graph_on:
            return loss_fn(*tensors)
        if self._cuda_graph_step is None:
            log.info("capturing the training step's forward and backward as a CUDA graph (batch shapes %s)",
                     [tuple(t.shape) for t in tensors])  # fmt: skip
            self._cuda_graph_step = CUDAGraphTrainStep(loss_fn, None, tensors, parameters=self.parameters())
            log.info("captured; the step's peak GPU memory: %.2f GiB", self._cuda_graph_step.peak_memory_bytes / 2**30)
        return self._cuda_graph_step(*tensors).clone()  # the graph's loss tensor is overwritten by the next replay

    def set_cuda_graph(self, on: bool) -> None:
        """Turn the graphed step on (captured at the next training batch) or off (the graph and its memory go)."""
        self._cuda_graph_on = on
        self._cuda_graph_step = None

    def backward(self, loss: torch.Tensor, *args, **kwargs) -> None:
        if not self._cuda_graph_on:
            super().backward(loss, *args, **kwargs)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        if not self._cuda_graph_on:
            super().optimizer_zero_grad(epoch, batch_idx, optimizer)


class CUDAGraphTrainingCallback(pl.Callback):
    """Turns a `CUDAGraphTraining` module's graphed step on for `fit` (after any checkpoint restore) and off after,
    having checked that the run can use it: a CUDA device, one process, no gradient accumulation."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        problems = self.problems(trainer, pl_module)
        if problems:
            raise ValueError("trainer.cuda_graph=true: " + "; ".join(problems) + " (set trainer.cuda_graph=false)")
        pl_module.set_cuda_graph(True)

    @staticmethod
    def problems(trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[str]:
        """What in this run rules the graphed step out, one sentence each (empty: nothing)."""
        problems = []
        if not isinstance(pl_module, CUDAGraphTraining):
            problems.append(f"{type(pl_module).__name__} does not compute its loss through CUDAGraphTraining")
        if pl_module.device.type != "cuda":
            problems.append(f"it needs a CUDA GPU, and this run trains on {pl_module.device.type}")
        if trainer.world_size > 1:
            problems.append(f"it runs on one device, and this run has {trainer.world_size} processes (DDP and "
                            "FSDP reduce gradients inside the backward, which the graph does not capture)")  # fmt: skip
        if trainer.accumulate_grad_batches > 1:
            problems.append(f"each replay overwrites the gradients, so trainer.accumulate_grad_batches must be 1, "
                            f"not {trainer.accumulate_grad_batches}")  # fmt: skip
        return problems

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.set_cuda_graph(False)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(pl_module, CUDAGraphTraining):
            pl_module.set_cuda_graph(False)
