"""Windows and datamodules: region splits without overlap, determinism, N skipping, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.genomics.data import (
    GUEDataModule,
    PretrainDataConfig,
    PretrainDataModule,
    SpeciesDataModule,
    pad_collate,
    read_sequence_csv,
)
from tasks.genomics.fasta import EncodedRecord
from tasks.genomics.tokenizer import DNATokenizer
from tasks.genomics.windows import RandomWindows, TiledWindows, WindowError, split_regions

TOK = DNATokenizer()


def _records(*seqs: str) -> list[EncodedRecord]:
    return [EncodedRecord(f"r{i}", TOK.encode(s)) for i, s in enumerate(seqs)]


def test_split_has_no_overlap_and_covers_blocks():
    rng = np.random.default_rng(0)
    records = _records(*("".join(rng.choice(list("ACGT"), n)) for n in (10_000, 3_500, 50)))
    splits = split_regions(records, block_size=1000, fractions={"val": 0.1, "test": 0.1}, window=100, seed=1,
                           source="toy")  # fmt: skip
    covered = {}
    for name, regions in splits.items():
        for r in regions:
            for pos in range(r.start, r.end):
                assert (r.record, pos) not in covered, f"{name} overlaps {covered[(r.record, pos)]}"
                covered[(r.record, pos)] = name
    assert len(splits["val"]) == len(splits["test"]) == 1 and len(splits["train"]) == 12  # 50-base record dropped
    again = split_regions(records, block_size=1000, fractions={"val": 0.1, "test": 0.1}, window=100, seed=1,
                          source="toy")  # fmt: skip
    assert again == splits


def test_random_windows_are_deterministic_inside_train_and_skip_n():
    seq = "N" * 5000 + "ACGT" * 2500
    records = _records(seq)
    splits = split_regions(records, block_size=1000, fractions={"val": 0.2}, window=64, seed=0, source="toy")
    ds = RandomWindows(records, splits["train"], 64, n_samples=50, seed=3, max_n_fraction=0.5)
    again = RandomWindows(records, splits["train"], 64, n_samples=50, seed=3, max_n_fraction=0.5)
    for i in range(50):
        assert torch.equal(ds[i], again[i])
        assert (ds[i] == TOK.n_id).float().mean() <= 0.5
    tiled = TiledWindows(records, [r for r in splits["train"] + splits["val"]], 64)
    assert all((tiled[i] == TOK.n_id).sum() <= 32 for i in range(len(tiled)))
    assert len(tiled) < (len(seq) // 64)  # the all-N half was skipped
    with pytest.raises(WindowError, match="no 64-base window"):
        TiledWindows(
            _records("N" * 1000),
            [
                split_regions(_records("N" * 1000), block_size=1000, fractions={}, window=64, seed=0, source="gaps")[
                    "train"
                ][0]
            ],
            64,
        )


def test_rc_augmentation_returns_reverse_complements():
    records = _records("AAAAAAAACCCCCCCC" * 10)
    regions = split_regions(records, block_size=160, fractions={}, window=16, seed=0, source="toy")["train"]
    ds = RandomWindows(records, regions, 16, n_samples=40, seed=0, rc_prob=0.5)
    texts = {TOK.decode(ds[i]) for i in range(40)}
    assert any("G" in t for t in texts) and any("A" in t for t in texts)


def test_window_longer_than_every_record():
    with pytest.raises(WindowError, match=r"toy: a window of 101 bases is longer than every record.*'r1', 60 bp"):
        split_regions(_records("ACGT" * 10, "ACGT" * 15), block_size=1000, fractions={}, window=101, seed=0,
                      source="toy")  # fmt: skip


def test_pretrain_datamodule_batches_and_eval_genomes(data_dir):
    cfg = PretrainDataConfig(genome="lambda_phage", eval_genomes=["human_mt"], seq_len=128, batch_size=4,
                             block_size=4000, val_fraction=0.1, max_val_windows=5)  # fmt: skip
    dm = PretrainDataModule(cfg)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == batch["labels"].shape == (4, 128)
    assert torch.equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1])
    assert dm.val_names == ["lambda_phage", "human_mt"] and [len(d) for d in dm.val_sets] == [5, 5]
    train = {(r.record, p) for r in dm.train_regions for p in range(r.start, r.end)}
    assert not any((r.record, p) in train for r in dm.val_regions for p in range(r.start, r.end))


def test_pretrain_datamodule_errors(data_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown genome 'nope'"):
        PretrainDataModule(PretrainDataConfig(genome="lambda_phage", eval_genomes=["nope"]))
    with pytest.raises(WindowError, match="lambda_virus.fa.gz: a window of 100001 bases"):
        PretrainDataModule(PretrainDataConfig(genome="lambda_phage", seq_len=100_000)).setup()


def test_gue_csv_and_padding(data_dir, tmp_path):
    dm = GUEDataModule("prom/prom_core_tata", batch_size=8, max_train_samples=100)
    dm.setup()
    assert dm.num_classes == 2 and len(dm.splits["train"]) == 100 and len(dm.splits["test"]) == 613
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (8, 70) and batch["mask"].all()
    padded = pad_collate([(torch.tensor([7, 8]), 0), (torch.tensor([9, 9, 10]), 1)])
    assert padded["input_ids"].tolist() == [[7, 8, TOK.pad_id], [9, 9, 10]]
    assert padded["mask"].tolist() == [[True, True, False], [True, True, True]]
    bad = tmp_path / "bad.csv"
    bad.write_text("sequence,label\nACGT,1\nACXT,0\n")
    with pytest.raises(ValueError, match=r"bad.csv:3.*'X' at position 3"):
        read_sequence_csv(bad)
    bad.write_text("seq,label\nACGT,1\n")
    with pytest.raises(ValueError, match="needs a header"):
        read_sequence_csv(bad)
    with pytest.raises(FileNotFoundError, match="no train.csv"):
        GUEDataModule("tf/99").setup()


def test_species_windows_are_balanced(data_dir):
    dm = SpeciesDataModule(["human_mt", "orangutan_mt", "lambda_phage"], seq_len=100, block_size=1000,
                           train_samples=30, max_eval_windows=4)  # fmt: skip
    dm.setup()
    labels = [dm.splits["train"][i][1] for i in range(len(dm.splits["train"]))]
    assert sorted(set(labels)) == [0, 1, 2] and labels.count(0) == labels.count(2) == 10
    assert len(dm.splits["test"]) == 12
