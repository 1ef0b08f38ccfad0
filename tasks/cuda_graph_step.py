"""A whole training step (forward, loss, backward, optimizer step) captured once as a CUDA graph, then replayed.

A Mamba training step launches a few hundred small kernels per layer pass (projections, conv, scan, norm, their
backwards, the optimizer); at 130M parameters and 16k tokens per step the GPU finishes many of them faster than
Python and autograd can launch the next, so an eager step spends a fifth of its time waiting on the host. Replaying a
captured graph launches the same kernels with one call and no Python, so the step runs at the GPU's own speed.

    step = CUDAGraphTrainStep(loss_fn, optimizer, example_batch)   # warms up, captures; the model is left unchanged
    for batch in loader:
        loss = step(*batch)         # copies `batch` into the captured inputs, replays; `loss` is a 0-dim CUDA tensor

With `optimizer=None` (and the trained `parameters` given) only the forward, loss and backward are captured: each
replay leaves fresh gradients in the parameters' `.grad`, and the caller clips them and steps its own optimizer
eagerly. That is how a Lightning module uses it (`tasks.cuda_graph_lightning`): Lightning keeps the optimizer step,
the schedule, clipping and checkpointing; the graph takes the part that launches hundreds of kernels per layer.

What capture requires, and this class checks or arranges:
- fixed shapes: every batch must have the shapes and dtypes of `example_batch` (a different one raises);
- an optimizer that can run inside a graph: `capturable=True` (e.g. `torch.optim.AdamW(..., fused=True,
  capturable=True)`); to schedule the learning rate, give it as a CUDA tensor and change it in place;
- no host synchronisation inside `loss_fn` (no `.item()`, no data-dependent shapes);
- warm-up before capture (Triton compiles, cuBLAS picks algorithms, the optimizer allocates its moments): it runs on
  the example batch, and the parameters and the optimizer state are restored afterwards, so constructing the step
  does not train the model (buffers a forward changes, such as batch-norm statistics, are not restored);
- the gradients live in the graph's memory: they are overwritten (not accumulated) by each replay. With a captured
  optimizer they must not be set to None between steps; with `optimizer=None` each replay binds them to `.grad` again;
- autocast's cache of low-precision weight copies is off during warm-up and capture: a cast found in the cache is not
  recorded, so the graph would replay with the weights as they were when it was filled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

__all__ = ["CUDAGraphTrainStep"]


class CUDAGraphTrainStep:
    """Capture `loss_fn(*batch).backward(); optimizer.step()` as one CUDA graph; call with a batch to replay it.

    Args:
        loss_fn: `(*batch) -> loss`, a 0-dim tensor; runs the model's forward and loss (autocast inside it if wanted).
        optimizer: a `torch.optim.Optimizer` built with `capturable=True`, over the parameters `loss_fn` trains; or
            None to capture the forward and backward only (then `parameters` names what is trained).
        example_batch: CUDA tensors with the shapes and dtypes of every later batch; used for warm-up and capture.
        warmup_steps: eager steps before capture (they are undone).
        parameters: the parameters whose gradients the graph produces; only with `optimizer=None`.

    Attributes:
        peak_memory_bytes: device memory in use at the peak of a step (weights, optimizer state, gradients and the
            activations of the captured step), measured during the capture.
    """

    def __init__(
        self,
        loss_fn: Callable[..., torch.Tensor],
        optimizer: torch.optim.Optimizer | None,
        example_batch: Sequence[torch.Tensor],
        *,
        warmup_steps: int = 3,
        parameters: Iterable[torch.Tensor] | None = None,
    ) -> None:
        if (optimizer is None) == (parameters is None):
            raise ValueError("CUDAGraphTrainStep: give an optimizer (a whole step is captured) or, with "
                             "optimizer=None, the trained parameters (forward and backward only)")  # fmt: skip
        # Optimizers with a step count (Adam, AdamW, ...) have the flag; those without (SGD) capture as they are.
        if optimizer is not None and any(group.get("capturable") is False for group in optimizer.param_groups):
            raise ValueError(
                f"CUDAGraphTrainStep: {type(optimizer).__name__} must be built with capturable=True to run inside a "
                "CUDA graph (its step count then lives on the GPU)"
            )
        for i, t in enumerate(example_batch):
            if not (isinstance(t, torch.Tensor) and t.is_cuda):
                raise ValueError(f"CUDAGraphTrainStep: example_batch[{i}] must be a CUDA tensor, got {_describe(t)}")
        self.loss_fn, self.optimizer = loss_fn, optimizer
        if optimizer is not None:
            self.params = [p for group in optimizer.param_groups for p in group["params"]]
        else:
            self.params = [p for p in parameters if p.requires_grad]
        self.static_batch = [t.detach().clone() for t in example_batch]

        cache_was_enabled = torch.is_autocast_cache_enabled()
        torch.set_autocast_cache_enabled(False)  # see the module docstring: every cast must be recorded
        try:
            saved = _snapshot(self.params, optimizer) if optimizer is not None else None
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up off the default stream, as graph capture wants
                for _ in range(warmup_steps):
                    self._release_grads()
                    self._step()
            torch.cuda.current_stream().wait_stream(side)
            if saved is not None:
                _restore(self.params, optimizer, saved)
            del saved

            self._release_grads()  # the gradients are then allocated inside the graph's pool
            # A replay allocates nothing: the memory it uses is what was live at the peak of the capture (the
            # device's peak statistics are reset for this, which is why they are reset here, once).
            torch.cuda.reset_peak_memory_stats()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_loss = self._step()
            self.peak_memory_bytes = torch.cuda.max_memory_allocated()
            # Where each replay writes the gradients. With optimizer=None the caller steps the optimizer, and code
            # between replays may drop `.grad` (Lightning sets it to None before each validation), so every replay
            # binds these again; otherwise the optimizer would see no gradients and silently skip its parameters.
            self.static_grads = [p.grad for p in self.params]
        finally:
            torch.set_autocast_cache_enabled(cache_was_enabled)

    def _release_grads(self) -> None:
        for p in self.params:
            p.grad = None

    def _step(self) -> torch.Tensor:
        loss = self.loss_fn(*self.static_batch)
        loss.backward()
        if self.optimizer is not None:
            self.optimizer.step()
        return loss.detach()

    def __call__(self, *batch: torch.Tensor) -> torch.Tensor:
        """Copy `batch` into the captured inputs and replay one step; returns the step's loss (a 0-dim CUDA tensor,
        overwritten by the next call: clone it to keep it)."""
        if len(batch) != len(self.static_batch):
            raise ValueError(f"CUDAGraphTrainStep: expected {len(self.static_batch)} batch tensors, got {len(batch)}")
        for i, (static, new) in enumerate(zip(self.static_batch, batch, strict=True)):
            if not isinstance(new, torch.Tensor) or new.shape != static.shape or new.dtype != static.dtype:
                raise ValueError(
                    f"CUDAGraphTrainStep: batch[{i}] is {_describe(new)}, but the graph was captured for "
                    f"{_describe(static)}; a CUDA graph replays fixed shapes (pad or drop the last batch)"
                )
            static.copy_(new, non_blocking=True)
        self.graph.replay()
        if self.optimizer is None:
            for p, grad in zip(self.params, self.static_grads, strict=True):
                p.grad = grad
        return self.static_loss


def _describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"a {t.dtype} tensor of shape {tuple(t.shape)} on {t.device}"
    return f"a {type(t).__name__}"


def _snapshot(params: list[torch.Tensor], optimizer: torch.optim.Optimizer):
    """Copies of the parameters and of the optimizer's per-parameter state, to undo the warm-up steps."""
    weights = [p.detach().clone() for p in params]
    state = {id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in optimizer.state[p].items()}
             for p in params if p in optimizer.state}  # fmt: skip
    return weights, state


@torch.no_grad()
def _restore(params: list[torch.Tensor], optimizer: torch.optim.Optimizer, saved) -> None:
    """Put the snapshot back in place: the same tensors (the graph will read and write them), the old values.

    State the warm-up created (a fresh optimizer's moments and step count) is zeroed, which is what a first step
    expects to find."""
    weights, state = saved
    for p, w in zip(params, weights, strict=True):
        p.copy_(w)
    for p in params:
        before = state.get(id(p), {})
        for key, value in optimizer.state[p].items():
            if not torch.is_tensor(value):
                optimizer.state[p][key] = before.get(key, value)
            elif key in before:
                value.copy_(before[key])
            else:
                value.zero_()
