"""Fixed-length windows over encoded genomes, split by genome region so no base is in two splits.

Each record is cut into blocks of `block_size` bases; a seeded permutation assigns whole blocks to validation/test
and the rest to training, and a window never crosses a block edge. Training windows are drawn at random (the
`i`-th item is a pure function of `(seed, i)`, so runs are reproducible and DataLoader workers need no shared
state); evaluation windows tile their blocks without overlap. Windows that are mostly `N` (assembly gaps,
telomeres) are never returned: a prefix sum of N counts makes the check O(1) per window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from tasks.genomics.fasta import EncodedRecord
from tasks.genomics.tokenizer import DNATokenizer


class WindowError(ValueError):
    """The genome cannot give windows of the requested length/split; the message says which and how to fix."""


@dataclass(frozen=True)
class Region:
    """Bases `[start, end)` of record number `record`."""

    record: int
    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start


def check_window(records: list[EncodedRecord], window: int, source: str) -> None:
    """Raise `WindowError` when `window` is longer than every record of `source`."""
    longest = max(records, key=len)
    if len(longest) < window:
        raise WindowError(
            f"{source}: a window of {window} bases is longer than every record (longest: {longest.name!r}, "
            f"{len(longest)} bp); lower data.seq_len"
        )


def split_regions(
    records: list[EncodedRecord], *, block_size: int, fractions: dict[str, float], window: int, seed: int, source: str
) -> dict[str, list[Region]]:
    """Assign whole blocks of the genome to splits.

    Args:
        fractions: held-out splits and their share of the blocks, e.g. `{"val": 0.05}`; the rest is `"train"`.
            Every held-out split with a positive share gets at least one block.
        window: blocks shorter than this are dropped (they cannot hold a window).

    Returns:
        `{"train": [...], **{name: [...] for name in fractions}}`.
    """
    check_window(records, window, source)
    block_size = max(block_size, window)
    blocks = []
    for i, rec in enumerate(records):
        for start in range(0, len(rec), block_size):
            end = min(start + block_size, len(rec))
            if end - start >= window:
                blocks.append(Region(i, start, end))
    counts = {name: max(1, round(frac * len(blocks))) if frac > 0 else 0 for name, frac in fractions.items()}
    if sum(counts.values()) >= len(blocks):
        raise WindowError(
            f"{source}: {len(blocks)} block(s) of <= {block_size} bp cannot give held-out splits {counts} and keep "
            f"training data; lower data.block_size or the held-out fractions"
        )
    order = np.random.default_rng(seed).permutation(len(blocks))
    splits, at = {}, 0
    for name, count in counts.items():
        splits[name] = sorted((blocks[j] for j in order[at : at + count]), key=lambda r: (r.record, r.start))
        at += count
    splits["train"] = sorted((blocks[j] for j in order[at:]), key=lambda r: (r.record, r.start))
    return splits


def whole_records(records: list[EncodedRecord]) -> list[Region]:
    return [Region(i, 0, len(rec)) for i, rec in enumerate(records)]


class _Windows(Dataset):
    """Shared state: the encoded records, the regions windows may come from, and N prefix sums."""

    def __init__(self, records: list[EncodedRecord], regions: list[Region], window: int, max_n_fraction: float):
        self.records = [rec.ids for rec in records]
        self.regions = [r for r in regions if len(r) >= window]
        self.window = window
        self.max_n = int(max_n_fraction * window)
        n_id = DNATokenizer().n_id
        self._n_prefix = [np.concatenate([[0], np.cumsum(ids == n_id, dtype=np.int32)]) for ids in self.records]

    def _n_count(self, record: int, start: int) -> int:
        prefix = self._n_prefix[record]
        return int(prefix[start + self.window] - prefix[start])

    def _slice(self, record: int, start: int) -> torch.Tensor:
        return torch.from_numpy(self.records[record][start : start + self.window].astype(np.int64))


class RandomWindows(_Windows):
    """`n_samples` random windows `[window]` int64; item `i` depends only on `(seed, i)`.

    With `rc_prob > 0` a window is reverse-complemented with that probability (augmentation: DNA is read on both
    strands, so a model should see both).
    """

    def __init__(
        self,
        records: list[EncodedRecord],
        regions: list[Region],
        window: int,
        *,
        n_samples: int,
        seed: int,
        rc_prob: float = 0.0,
        max_n_fraction: float = 0.5,
        source: str = "genome",
    ):
        super().__init__(records, regions, window, max_n_fraction)
        if not self.regions:
            raise WindowError(f"{source}: no region of the training split holds a {window}-base window")
        starts = np.array([len(r) - window + 1 for r in self.regions], dtype=np.float64)
        self._weights = starts / starts.sum()
        self.n_samples, self.seed, self.rc_prob = n_samples, seed, rc_prob
        self._tokenizer = DNATokenizer()
        self.source = source

    def __len__(self) -> int:
        return self.n_samples

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, index])
        # Rejection sampling: mostly-N windows are rare outside gaps, so a few tries suffice.
        for _ in range(100):
            region = self.regions[rng.choice(len(self.regions), p=self._weights)]
            start = region.start + int(rng.integers(0, len(region) - self.window + 1))
            if self._n_count(region.record, start) <= self.max_n:
                break
        else:
            raise WindowError(f"{self.source}: 100 random windows in a row were mostly N; check the genome")
        ids = self._slice(region.record, start)
        if self.rc_prob > 0 and rng.random() < self.rc_prob:
            ids = self._tokenizer.reverse_complement(ids)
        return ids


class TiledWindows(_Windows):
    """Non-overlapping windows `[window]` int64 tiling the regions, mostly-N ones skipped, at most `max_windows`
    (spread evenly over all candidates, so a cap still covers every region)."""

    def __init__(
        self,
        records: list[EncodedRecord],
        regions: list[Region],
        window: int,
        *,
        max_windows: int | None = None,
        max_n_fraction: float = 0.5,
        source: str = "genome",
    ):
        super().__init__(records, regions, window, max_n_fraction)
        starts = [
            (r.record, s)
            for r in self.regions
            for s in range(r.start, r.end - window + 1, window)
            if self._n_count(r.record, s) <= self.max_n
        ]
        if not starts:
            raise WindowError(f"{source}: no {window}-base window with at most {self.max_n} N in the held-out regions")
        if max_windows is not None and len(starts) > max_windows:
            keep = np.linspace(0, len(starts) - 1, max_windows).round().astype(int)
            starts = [starts[k] for k in keep]
        self.starts = starts

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self._slice(*self.starts[index])
