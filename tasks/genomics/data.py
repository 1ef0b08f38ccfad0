"""LightningDataModules for DNA: pretraining windows, GUE-style labeled CSVs, and species classification.

All file reading, encoding and validation happens in `setup()` in the main process, so bad input (an unknown
genome, an empty FASTA, a window longer than every record, a malformed CSV) fails there with a message naming the
file, record or line, never inside a DataLoader worker.

Batches:
* pretraining: `{"input_ids": [B, L] int64, "labels": [B, L] int64}` (labels are the next base; `N` targets are
  -100, so loss and bits per base are over A/C/G/T).
* classification: `{"input_ids": [B, L] int64, "mask": [B, L] bool (True on real bases), "label": [B] int64}`.
"""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from tasks.data_sources import NamedDataset, resolve
from tasks.distributed import eval_shards
from tasks.genomics.catalog import GENOMES, genome_path
from tasks.genomics.fasta import EncodedRecord, load_genome
from tasks.genomics.metrics import IGNORE_INDEX
from tasks.genomics.tokenizer import DNATokenizer, InvalidSequenceError
from tasks.genomics.windows import RandomWindows, TiledWindows, split_regions, whole_records

GUE = NamedDataset(
    "gue",
    "GUE",
    "https://github.com/MAGICS-LAB/DNABERT_2#data",
    "GUE benchmark of DNABERT-2 (folder GUE/ with <group>/<task>/{train,dev,test}.csv)",
)


def load_named_genome(name: str, path: str | None = None, tokenizer: DNATokenizer | None = None):
    """`(records, source)` for a catalog name or, with `path`, any FASTA file."""
    source = genome_path(name, path)
    return load_genome(source, tokenizer), str(source)


@dataclass
class PretrainDataConfig:
    """Windows for next-base prediction.

    genome: catalog name of the training genome; path: its FASTA instead of the catalog lookup.
    eval_genomes: more catalog names evaluated as extra validation sets (all their windows are held out).
    seq_len: bases per example (a window is seq_len + 1 bases: inputs and shifted targets).
    block_size / val_fraction: region split (see `tasks.genomics.windows`).
    train_samples: random windows per epoch; max_val_windows: cap per validation set.
    rc_augment: reverse-complement half of the training windows.
    max_n_fraction: windows with more N than this share are skipped.
    """

    genome: str = "ecoli_k12"
    path: str | None = None
    eval_genomes: list[str] = field(default_factory=list)
    seq_len: int = 512
    batch_size: int = 16
    block_size: int = 50_000
    val_fraction: float = 0.05
    max_val_windows: int = 64
    train_samples: int = 1_000_000
    rc_augment: bool = True
    max_n_fraction: float = 0.5
    seed: int = 0
    num_workers: int = 0


def lm_example(window: torch.Tensor, n_id: int) -> dict[str, torch.Tensor]:
    """`[L + 1]` ids -> inputs `[L]` and next-base labels `[L]` (N targets ignored)."""
    labels = window[1:].clone()
    labels[labels == n_id] = IGNORE_INDEX
    return {"input_ids": window[:-1], "labels": labels}


class _LMWindows(Dataset):
    def __init__(self, windows: Dataset):
        self.windows, self.n_id = windows, DNATokenizer().n_id

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return lm_example(self.windows[index], self.n_id)


class PretrainDataModule(pl.LightningDataModule):
    """Training windows from `cfg.genome`; validation sets `val_names` = [held-out regions, *eval genomes]."""

    def __init__(self, cfg: PretrainDataConfig):
        super().__init__()
        self.cfg = cfg
        self.val_names = [cfg.genome, *cfg.eval_genomes]
        for name in cfg.eval_genomes:
            if name not in GENOMES:
                genome_path(name)  # raises UnknownGenomeError listing the catalog

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        cfg = self.cfg
        window = cfg.seq_len + 1
        records, source = load_named_genome(cfg.genome, cfg.path)
        splits = split_regions(
            records, block_size=cfg.block_size, fractions={"val": cfg.val_fraction}, window=window, seed=cfg.seed,
            source=source,
        )  # fmt: skip
        self.train_set = _LMWindows(
            RandomWindows(
                records, splits["train"], window, n_samples=cfg.train_samples, seed=cfg.seed,
                rc_prob=0.5 if cfg.rc_augment else 0.0, max_n_fraction=cfg.max_n_fraction, source=source,
            )
        )  # fmt: skip
        self.val_sets = [_LMWindows(self._tiled(records, splits["val"], source))]
        for name in cfg.eval_genomes:
            eval_records, eval_source = load_named_genome(name)
            self.val_sets.append(_LMWindows(self._tiled(eval_records, whole_records(eval_records), eval_source)))
        self.train_regions, self.val_regions = splits["train"], splits["val"]

    def _tiled(self, records: list[EncodedRecord], regions, source: str) -> TiledWindows:
        cfg = self.cfg
        return TiledWindows(
            records, regions, cfg.seq_len + 1, max_windows=cfg.max_val_windows, max_n_fraction=cfg.max_n_fraction,
            source=source,
        )  # fmt: skip

    def _loader(self, dataset: Dataset, sampler: Sampler | None = None, drop_last: bool = False) -> DataLoader:
        return DataLoader(
            dataset, batch_size=self.cfg.batch_size, sampler=sampler, num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0, drop_last=drop_last,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        # Items are already seeded random draws, so they are read in order. Under DDP each rank takes every
        # world_size-th item (Lightning's own sampler would shuffle), so global batch k holds the same windows on any
        # number of devices: a run reproduces across device counts.
        trainer = self.trainer
        # Training batches all have batch_size windows (a short last one would be a different shape for a CUDA graph
        # and a noisier step); the windows are random draws, so none is lost for good.
        if trainer is None or trainer.world_size == 1:
            return self._loader(self.train_set, drop_last=True)
        sampler = DistributedSampler(
            self.train_set, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False, drop_last=True
        )
        return self._loader(self.train_set, sampler, drop_last=True)

    def val_dataloader(self) -> list[DataLoader]:
        # With several processes each window is scored once over all ranks (`tasks.distributed.eval_shards`).
        return [self._loader(*eval_shards(ds, self.trainer, _score_nothing)) for ds in self.val_sets]


def _score_nothing(item: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"input_ids": item["input_ids"], "labels": torch.full_like(item["labels"], IGNORE_INDEX)}


class LabeledSequences(Dataset):
    """Encoded sequences `[L_i]` uint8 with integer labels."""

    def __init__(self, sequences: list[np.ndarray], labels: list[int]):
        self.sequences, self.labels = sequences, labels

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.sequences[index].astype(np.int64)), self.labels[index]


def pad_collate(batch: list[tuple[torch.Tensor, int]], pad_id: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad `[(ids [L_i], label)]` to `{"input_ids": [B, L], "mask": [B, L], "label": [B]}`."""
    pad_id = DNATokenizer().pad_id if pad_id is None else pad_id
    length = max(ids.shape[0] for ids, _ in batch)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.bool)
    for i, (ids, _) in enumerate(batch):
        input_ids[i, : ids.shape[0]] = ids
        mask[i, : ids.shape[0]] = True
    return {"input_ids": input_ids, "mask": mask, "label": torch.tensor([label for _, label in batch])}


def read_sequence_csv(path: Path, tokenizer: DNATokenizer | None = None) -> LabeledSequences:
    """Read a `sequence,label` CSV (plain or gzip); errors name the file and line."""
    tokenizer = tokenizer or DNATokenizer()
    raw = path.read_bytes()
    try:
        text = gzip.decompress(raw).decode() if raw[:2] == b"\x1f\x8b" else raw.decode()
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: unreadable ({err})") from None
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not {"sequence", "label"} <= set(reader.fieldnames):
        raise ValueError(f"{path}: needs a header with columns 'sequence' and 'label', got {reader.fieldnames}")
    sequences, labels = [], []
    for row in reader:
        where = f"{path}:{reader.line_num}"
        try:
            label = int(float(row["label"]))
        except (TypeError, ValueError):
            raise ValueError(f"{where}: label {row['label']!r} is not an integer") from None
        if label < 0:
            raise ValueError(f"{where}: label {label} is negative; labels must be 0..num_classes-1")
        if not row["sequence"]:
            raise ValueError(f"{where}: empty sequence")
        try:
            sequences.append(tokenizer.encode(row["sequence"], record=where))
        except InvalidSequenceError as err:
            raise ValueError(str(err)) from None
        labels.append(label)
    if not sequences:
        raise ValueError(f"{path}: no rows")
    return LabeledSequences(sequences, labels)


def _subsample(dataset: LabeledSequences, n: int | None, seed: int) -> LabeledSequences:
    if n is None or n >= len(dataset):
        return dataset
    keep = np.sort(np.random.default_rng(seed).choice(len(dataset), n, replace=False))
    return LabeledSequences([dataset.sequences[i] for i in keep], [dataset.labels[i] for i in keep])


class _ClassificationLoaders(pl.LightningDataModule):
    """Loaders over `self.splits` = {"train", "val", "test"} -> LabeledSequences-like datasets."""

    batch_size: int
    num_workers: int

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        return DataLoader(
            self.splits[split], batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
            collate_fn=pad_collate, persistent_workers=self.num_workers > 0,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


class GUEDataModule(_ClassificationLoaders):
    """A GUE task folder (`train.csv`, `dev.csv`, `test.csv`, optionally gzipped), e.g. `task="tf/0"`."""

    def __init__(self, task: str, *, path: str | None = None, batch_size: int = 64, num_workers: int = 0,
                 max_train_samples: int | None = None, max_eval_samples: int | None = None,
                 seed: int = 0):  # fmt: skip
        super().__init__()
        self.task, self.path, self.seed, self.max_eval_samples = task, path, seed, max_eval_samples
        self.batch_size, self.num_workers, self.max_train_samples = batch_size, num_workers, max_train_samples

    def task_dir(self) -> Path:
        root = resolve(GUE, self.path, download=False)
        folder = root / self.task if (root / self.task).is_dir() else root
        if not any(folder.glob("train.csv*")):
            raise FileNotFoundError(f"GUE task {self.task!r}: no train.csv(.gz) in {folder}")
        return folder

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "splits"):
            return
        folder = self.task_dir()
        self.splits = {}
        for split, stem in (("train", "train"), ("val", "dev"), ("test", "test")):
            files = sorted(folder.glob(f"{stem}.csv*"))
            if not files:
                raise FileNotFoundError(f"GUE task {self.task!r}: no {stem}.csv(.gz) in {folder}")
            self.splits[split] = read_sequence_csv(files[0])
        self.splits["train"] = _subsample(self.splits["train"], self.max_train_samples, self.seed)
        for split in ("val", "test"):
            self.splits[split] = _subsample(self.splits[split], self.max_eval_samples, self.seed)
        self.num_classes = max(self.splits["train"].labels) + 1
        self.class_names = [str(i) for i in range(self.num_classes)]
        for split, ds in self.splits.items():
            if max(ds.labels) >= self.num_classes:
                raise ValueError(f"GUE task {self.task!r}: {split} has label {max(ds.labels)} unseen in train")


class _Labeled(Dataset):
    def __init__(self, windows: Dataset, label: int):
        self.windows, self.label = windows, label

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.windows[index], self.label


class _Balanced(Dataset):
    """Item `i` is a window of genome `i % G`: classes stay balanced whatever the genome sizes."""

    def __init__(self, per_genome: list[Dataset]):
        self.per_genome = per_genome

    def __len__(self) -> int:
        return min(len(ds) for ds in self.per_genome) * len(self.per_genome)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        g = index % len(self.per_genome)
        return self.per_genome[g][index // len(self.per_genome)]


class SpeciesDataModule(_ClassificationLoaders):
    """Species classification (the Mamba paper's great-apes task): a random window, label = which genome.

    Each genome's blocks are split into train/val/test regions; val/test tile their regions (at most
    `max_eval_windows` per genome), training draws `train_samples` random windows (both strands).
    """

    def __init__(self, genomes: list[str], *, seq_len: int = 256, batch_size: int = 32, block_size: int = 20_000,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, train_samples: int = 20_000,
                 max_eval_windows: int = 256, seed: int = 0, num_workers: int = 0):  # fmt: skip
        super().__init__()
        if len(genomes) < 2:
            raise ValueError(f"species classification needs at least 2 genomes, got {genomes}")
        self.genomes, self.seq_len, self.block_size, self.seed = list(genomes), seq_len, block_size, seed
        self.fractions = {"val": val_fraction, "test": test_fraction}
        self.train_samples, self.max_eval_windows = train_samples, max_eval_windows
        self.batch_size, self.num_workers = batch_size, num_workers
        self.num_classes, self.class_names = len(genomes), list(genomes)
        for name in genomes:
            if name not in GENOMES:
                genome_path(name)  # raises UnknownGenomeError listing the catalog

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "splits"):
            return
        parts: dict[str, list[Dataset]] = {"train": [], "val": [], "test": []}
        per_genome = -(-self.train_samples // len(self.genomes))
        for label, name in enumerate(self.genomes):
            records, source = load_named_genome(name)
            regions = split_regions(records, block_size=self.block_size, fractions=self.fractions,
                                    window=self.seq_len, seed=self.seed, source=source)  # fmt: skip
            train = RandomWindows(records, regions["train"], self.seq_len, n_samples=per_genome,
                                  seed=self.seed + label, rc_prob=0.5, source=source)  # fmt: skip
            parts["train"].append(_Labeled(train, label))
            for split in ("val", "test"):
                tiled = TiledWindows(records, regions[split], self.seq_len, max_windows=self.max_eval_windows,
                                     source=source)  # fmt: skip
                parts[split].append(_Labeled(tiled, label))
        self.splits = {"train": _Balanced(parts["train"])}
        # Evaluation keeps every tiled window (classes may be unequal; the metrics are class-aware).
        self.splits.update({s: torch.utils.data.ConcatDataset(parts[s]) for s in ("val", "test")})


def materialize(dataset: Dataset, limit: int | None = None) -> tuple[list[np.ndarray], list[int]]:
    """`(sequences as uint8 arrays, labels)` of a classification dataset's first `limit` items (for baselines)."""
    if isinstance(dataset, LabeledSequences):
        n = len(dataset) if limit is None else min(limit, len(dataset))
        return dataset.sequences[:n], dataset.labels[:n]
    n = len(dataset) if limit is None else min(limit, len(dataset))
    items = [dataset[i] for i in range(n)]
    return [ids.numpy().astype(np.uint8) for ids, _ in items], [int(label) for _, label in items]
