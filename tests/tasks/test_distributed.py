"""Multi-device plumbing on one CPU process: throughput meter, evaluation shards, ordered gathering, per-rank seeds."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from tasks.distributed import PerRankSeed, Throughput, eval_shards, gather_ordered, throughput_metrics


class _Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(10, 4)

    def training_step(self, batch, batch_idx):
        return self.embedding(batch["input_ids"]).square().mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.embedding(batch["input_ids"]).square().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_throughput_counts_tokens_and_samples_after_warmup(tmp_path):
    batches = [{"input_ids": torch.randint(0, 10, (4, 16))} for _ in range(6)]
    meter = Throughput(warmup_steps=3, tokens_key="input_ids")
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_steps=9, val_check_interval=5, check_val_every_n_epoch=None,
        limit_val_batches=2, accelerator="cpu", devices=1, callbacks=[meter], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    loader = DataLoader(batches, batch_size=None)
    trainer.fit(_Tiny(), train_dataloaders=loader, val_dataloaders=loader)
    results = throughput_metrics(trainer)
    assert results["throughput/devices"] == 1 and results["throughput/steps"] == 6  # steps 3..8
    assert results["throughput/seconds"] > 0
    assert results["throughput/tokens_per_s"] == results["throughput/samples_per_s"] * 16 > 0
    assert results["throughput/tokens_per_s_per_device"] == results["throughput/tokens_per_s"]
    assert "throughput/peak_allocated_gib" not in results  # CPU: no CUDA memory to report
    assert json.loads((tmp_path / "throughput.json").read_text()) == results


def test_throughput_too_short_to_measure(tmp_path):
    trainer = pl.Trainer(default_root_dir=tmp_path, max_steps=2, accelerator="cpu", devices=1, logger=False,
                         callbacks=[Throughput(warmup_steps=5)], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    batches = [{"input_ids": torch.randint(0, 10, (2, 8))} for _ in range(4)]
    trainer.fit(_Tiny(), train_dataloaders=DataLoader(batches, batch_size=None))
    assert throughput_metrics(trainer) == {} and not (tmp_path / "throughput.json").exists()


def test_eval_shards_score_every_item_once_with_equal_batches():
    items = [{"x": torch.tensor(i), "y": torch.tensor(i)} for i in range(7)]

    def blank(item):
        return {"x": item["x"], "y": torch.tensor(-1)}

    assert eval_shards(items, None, blank) == (items, None)
    seen, lengths = [], set()
    for rank in range(3):
        dataset, sampler = eval_shards(items, SimpleNamespace(world_size=3, global_rank=rank), blank)
        ys = [int(dataset[i]["y"]) for i in sampler]
        lengths.add(len(ys))
        seen += [y for y in ys if y >= 0]
    assert sorted(seen) == list(range(7)) and lengths == {3}  # 9 slots: 7 items, 2 blanks


def test_gather_ordered_undoes_the_interleaving_and_drops_padding():
    # Rank r of 2 read items r, r + 2, ... of 5 (the last slot of rank 1 is padding, a repeat of item 0).
    per_rank = [torch.tensor([0, 2, 4]), torch.tensor([1, 3, 0])]
    loader = SimpleNamespace(dataset=list(range(5)))
    module = SimpleNamespace(
        trainer=SimpleNamespace(world_size=2, val_dataloaders=loader, test_dataloaders=loader),
        device=torch.device("cpu"), all_gather=lambda t: torch.stack(per_rank),
    )  # fmt: skip
    assert gather_ordered(module, per_rank[0], "val").tolist() == [0, 1, 2, 3, 4]
    module.trainer.world_size = 1
    assert gather_ordered(module, torch.arange(5), "test").tolist() == [0, 1, 2, 3, 4]


def test_ranks_above_zero_get_their_own_random_stream(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")
    draws = []
    for rank in (0, 1, 2):
        torch.manual_seed(0)
        PerRankSeed().setup(SimpleNamespace(global_rank=rank), None, "fit")
        draws.append(torch.rand(3))
    torch.manual_seed(0)
    assert torch.equal(draws[0], torch.rand(3))  # rank 0 keeps the single-device stream
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])


def test_saved_optimizer_state_is_keyed_the_way_fsdp_reads_it():
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import OptimStateKeyType

    from backbone.init import optimizer_groups
    from tasks.distributed import ModelOrderOptimizerState

    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    optimizer = torch.optim.AdamW(optimizer_groups(module, 0.1))  # decaying weights first: not the model's order
    module(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    checkpoint = {"optimizer_states": [optimizer.state_dict()]}
    trainer = SimpleNamespace(strategy=None, optimizers=[optimizer])
    ModelOrderOptimizerState().on_save_checkpoint(trainer, module, checkpoint)
    by_name = FSDP.rekey_optim_state_dict(checkpoint["optimizer_states"][0], OptimStateKeyType.PARAM_NAME, module)
    for name, param in module.named_parameters():
        assert torch.equal(by_name["state"][name]["exp_avg"], optimizer.state[param]["exp_avg"]), name
    fresh = torch.optim.AdamW(optimizer_groups(module, 0.1))  # one process reads it back by position
    fresh.load_state_dict(checkpoint["optimizer_states"][0])
    for param in module.parameters():
        assert torch.equal(fresh.state[param]["exp_avg"], optimizer.state[param]["exp_avg"])
