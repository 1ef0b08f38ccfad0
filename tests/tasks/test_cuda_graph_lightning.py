"""trainer.cuda_graph: Lightning training with the forward and backward replayed from a CUDA graph trains as eager
training does (optimizer, schedule, clipping, resuming), and the settings it cannot serve are named."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from backbone import MambaConfig
from tasks.cuda_graph_lightning import CUDAGraphTraining, CUDAGraphTrainingCallback
from tasks.lm import MambaLM, MambaLMConfig
from tasks.runs import TrainerConfig, build_trainer

VOCAB = 97


class TinyLM(CUDAGraphTraining, pl.LightningModule):
    """A 2-layer Mamba LM; records each training step's loss and whether a captured graph ran it."""

    def __init__(self, dropout: float = 0.0, lr: float = 3e-3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lr = lr
        self.model = MambaLM(MambaLMConfig(MambaConfig(d_model=64, n_layer=2, d_state=16), vocab_size=VOCAB))
        self.dropout = torch.nn.Dropout(dropout)
        self.losses: list[float] = []
        self.graphed_steps = 0

    def next_token_loss(self, ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.model.lm_head(self.dropout(self.model.hidden_states(ids)))
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    def training_step(self, batch, batch_idx):
        loss = self.training_loss(self.next_token_loss, *batch)
        self.losses.append(loss.item())
        self.graphed_steps += self._cuda_graph_step is not None
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.next_token_loss(*batch))

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.1)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 3))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def _loader(batches: int = 3) -> DataLoader:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (2 * batches, 65), generator=generator)
    return DataLoader(TensorDataset(ids[:, :-1], ids[:, 1:]), batch_size=2)


def _trainer(tmp_path, cuda_graph: bool, max_steps: int, accelerator: str = "gpu", **overrides) -> pl.Trainer:
    # Validation (one batch) at the end of each 3-batch epoch, between graph replays; it writes last.ckpt.
    settings = dict(max_steps=max_steps, val_check_interval=3, limit_val_batches=1, accelerator=accelerator,
                    devices=1, precision="bf16-mixed", gradient_clip_val=0.05, enable_progress_bar=False,
                    throughput_warmup_steps=1, cuda_graph=cuda_graph)  # fmt: skip
    cfg = TrainerConfig(**(settings | overrides))
    return build_trainer(cfg, tmp_path)


def test_build_trainer_adds_the_callback_only_when_asked(tmp_path):
    for on in (False, True):
        trainer = _trainer(tmp_path / str(on), on, max_steps=1, accelerator="cpu", precision="32-true")
        assert any(isinstance(cb, CUDAGraphTrainingCallback) for cb in trainer.callbacks) == on


def test_cuda_graph_on_cpu_is_a_clear_error(tmp_path):
    trainer = _trainer(tmp_path, True, max_steps=1, accelerator="cpu", precision="32-true")
    with pytest.raises(ValueError, match=r"trainer.cuda_graph=true: it needs a CUDA GPU, and this run trains on cpu"):
        trainer.fit(TinyLM(), _loader(), _loader())


def test_cuda_graph_names_a_module_without_the_mixin_and_gradient_accumulation(tmp_path):
    class Plain(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(64, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0].float()).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = _trainer(tmp_path, True, max_steps=1, accelerator="cpu", precision="32-true", accumulate_grad_batches=2)
    with pytest.raises(ValueError, match=r"Plain does not compute its loss through CUDAGraphTraining.*"
                                         r"accumulate_grad_batches must be 1, not 2"):  # fmt: skip
        trainer.fit(Plain(), _loader(), _loader())


class _EagerReplay:
    """Stands in for CUDAGraphTrainStep on the CPU with a replay's contract: each call leaves fresh gradients in
    `.grad` (the old ones are dropped first, as a replay overwrites them) and returns a loss without a graph."""

    def __init__(self, loss_fn, optimizer, example_batch, *, parameters):
        assert optimizer is None, "the Lightning mixin captures the forward and backward only"
        self.loss_fn, self.params = loss_fn, [p for p in parameters if p.requires_grad]
        self.peak_memory_bytes = 0

    def __call__(self, *batch):
        for p in self.params:
            p.grad = None
        loss = self.loss_fn(*batch)
        loss.backward()
        return loss.detach()


def test_lightning_steps_with_the_replay_contract_match_eager_steps(tmp_path, monkeypatch):
    """On the CPU, with the graph replaced by `_EagerReplay`: Lightning must neither run a second backward nor zero
    the gradients the replay left (either would change the result or fail), and it still clips, schedules and
    steps the optimizer."""
    import tasks.cuda_graph_lightning as graphed_training

    monkeypatch.setattr(graphed_training, "CUDAGraphTrainStep", _EagerReplay)
    monkeypatch.setattr(graphed_training.CUDAGraphTrainingCallback, "problems", staticmethod(lambda *a: []))
    runs = {}
    for on in (False, True):
        module = TinyLM()
        _trainer(tmp_path / str(on), on, max_steps=4, accelerator="cpu", precision="32-true").fit(
            module, _loader(), _loader()
        )
        runs[on] = module
    assert runs[False].graphed_steps == 0 and runs[True].graphed_steps == 4
    assert runs[True].losses[-1] < runs[True].losses[0], f"did not train: {runs[True].losses}"
    torch.testing.assert_close(torch.tensor(runs[True].losses), torch.tensor(runs[False].losses))
    for (name, p_on), p_off in zip(runs[True].named_parameters(), runs[False].parameters(), strict=True):
        torch.testing.assert_close(p_on, p_off, msg=f"parameter {name} differs")


@pytest.mark.gpu
def test_graphed_lightning_training_matches_eager_training(tmp_path):
    """Same losses and weights after 6 steps (2 epochs with a validation after each; warm-up schedule, clipping
    active, bf16-mixed), and a run resumed from the first epoch's checkpoint continues as the uninterrupted one."""
    runs = {}
    for on in (False, True):
        module = TinyLM()
        _trainer(tmp_path / f"run{on}", on, max_steps=6).fit(module, _loader(), _loader())
        runs[on] = module
    eager, graphed = runs[False], runs[True]
    assert eager.graphed_steps == 0 and graphed.graphed_steps == 6, "the graph did not run every step"
    assert graphed._cuda_graph_step is None, "the graph outlived fit"
    # Not bit-equal: the scan's backward sums dB/dC with atomics in whatever order its blocks finish.
    torch.testing.assert_close(torch.tensor(graphed.losses), torch.tensor(eager.losses), rtol=2e-3, atol=2e-3)
    assert graphed.losses[-1] < graphed.losses[0] - 0.05, f"did not train: {graphed.losses}"
    for (name, p_graph), p_eager in zip(graphed.named_parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p_graph, p_eager, rtol=1e-3, atol=4e-3, msg=f"parameter {name} differs")

    # Resume: one epoch (3 steps), stop; a new trainer restores the checkpoint (weights, optimizer, schedule) and
    # captures after that.
    _trainer(tmp_path / "resume", True, max_steps=3).fit(TinyLM(), _loader(), _loader())
    checkpoint = tmp_path / "resume" / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    resumed = TinyLM()
    _trainer(tmp_path / "resume", True, max_steps=6).fit(resumed, _loader(), _loader(), ckpt_path=checkpoint)
    assert resumed.graphed_steps == 3
    torch.testing.assert_close(torch.tensor(resumed.losses), torch.tensor(graphed.losses[3:]), rtol=2e-3, atol=2e-3)
    for (name, p_resumed), p_graph in zip(resumed.named_parameters(), graphed.parameters(), strict=True):
        torch.testing.assert_close(p_resumed, p_graph, rtol=1e-3, atol=4e-3, msg=f"parameter {name} differs")


@pytest.mark.gpu
def test_graphed_dropout_draws_new_masks_each_step(tmp_path):
    """Dropout inside the graph: each replay draws new masks. At lr 0 the weights stay put, so the same batch gives
    the same loss every step without dropout (the control) and a different one with it."""
    ids = torch.randint(0, VOCAB, (2, 65), generator=torch.Generator().manual_seed(2))
    same_batch = DataLoader(TensorDataset(ids[:, :-1].repeat(3, 1), ids[:, 1:].repeat(3, 1)), batch_size=2)
    losses = {}
    for dropout in (0.0, 0.5):
        module = TinyLM(dropout=dropout, lr=0.0)
        _trainer(tmp_path / str(dropout), True, max_steps=3).fit(module, same_batch, same_batch)
        assert module.graphed_steps == 3
        losses[dropout] = module.losses
    assert len(set(losses[0.0])) == 1, f"no dropout, lr 0, same batch, yet different losses: {losses[0.0]}"
    assert len(set(losses[0.5])) == 3, f"dropout drew the same mask twice: {losses[0.5]}"
