"""Labeled recordings: manifests, file-name patterns, the Free Spoken Digit Dataset, splits and clip datasets.

A dataset is a list of `AudioRecord`s, from one of:

* a manifest CSV with columns `path,label[,speaker][,split]` (FSDD's own `file,digit,speaker,...,split` is read too);
  relative paths are relative to the CSV's folder;
* a folder of files whose names carry the label (and optionally speaker/index/split), parsed with a regular
  expression with named groups, e.g. FSDD's `digit_speaker_index.wav`;
* `fsdd`: the Free Spoken Digit Dataset, found by `tasks.data_sources.resolve` (a `recordings` folder under
  `$MAMBALAB_DATA`, the user cache, or the public v1.0.10 release); standard split: take index 0-4 is test.

Bad input (a missing, empty, corrupt or foreign-format file; a row without a file; a label outside the label set)
raises an error naming the file and the CSV row, unless `skip_bad_files`, which drops it and counts it.
"""

from __future__ import annotations

import csv
import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from tasks.audio.io import AudioFileError, Normalization, load_waveform
from tasks.audio.tokenizer import MuLawTokenizer
from tasks.audio.transforms import AugmentConfig, augment, place
from tasks.data_sources import DatasetNotFoundError, NamedDataset, resolve
from tasks.distributed import eval_shards

log = logging.getLogger(__name__)

FSDD = NamedDataset(
    name="fsdd",
    filename="recordings",
    url="https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v1.0.10.tar.gz",
    description="Free Spoken Digit Dataset v1.0.10: 2,500 8 kHz WAVs named digit_speaker_index.wav",
)
FSDD_PATTERN = r"(?P<label>\d)_(?P<speaker>[a-z]+)_(?P<index>\d+)\.wav"
FSDD_LABELS = [str(d) for d in range(10)]
_PATH_COLUMNS, _LABEL_COLUMNS = ("path", "file", "filename"), ("label", "digit", "class")


class ManifestError(ValueError):
    """A manifest row or a file name cannot be turned into a record; the message names the file (and row)."""


@dataclass(frozen=True)
class AudioRecord:
    """One recording: where it is, its label, who spoke it, which split it belongs to, where it was listed."""

    path: Path
    label: str
    speaker: str | None = None
    split: str | None = None
    index: int | None = None
    origin: str = ""  # "manifest.csv:12" or the file itself, for error messages


@dataclass
class BadFiles:
    """Problems dropped under `skip_bad_files` (each message names the file/row), reported at the end of a run."""

    messages: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        log.warning("skipping: %s", message)
        self.messages.append(message)

    def __len__(self) -> int:
        return len(self.messages)


def _fail_or_skip(message: str, bad: BadFiles | None) -> None:
    if bad is None:
        raise ManifestError(message + " (set skip_bad_files to drop such entries and count them)")
    bad.add(message)


def _check_label(label: str, labels: Sequence[str] | None, origin: str, bad: BadFiles | None) -> bool:
    if labels is not None and label not in labels:
        _fail_or_skip(f"{origin}: label {label!r} is not in the label set {list(labels)}", bad)
        return False
    return True


def read_manifest(
    csv_path: str | Path, labels: Sequence[str] | None = None, bad: BadFiles | None = None
) -> list[AudioRecord]:
    """Records from a manifest CSV (see the module docstring); `bad` collects problems instead of raising."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ManifestError(f"{csv_path}: manifest not found")
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        path_col = next((c for c in _PATH_COLUMNS if c in columns), None)
        label_col = next((c for c in _LABEL_COLUMNS if c in columns), None)
        if path_col is None or label_col is None:
            raise ManifestError(
                f"{csv_path}: needs a path column ({'/'.join(_PATH_COLUMNS)}) and a label column "
                f"({'/'.join(_LABEL_COLUMNS)}); found columns {columns}"
            )
        records = []
        for line, row in enumerate(reader, start=2):
            origin = f"{csv_path}:{line}"
            if not (row.get(path_col) or "").strip():
                _fail_or_skip(f"{origin}: empty {path_col!r}", bad)
                continue
            path = Path(row[path_col].strip())
            path = path if path.is_absolute() else csv_path.parent / path
            if not path.is_file() and (csv_path.parent / "recordings" / path.name).is_file():
                path = csv_path.parent / "recordings" / path.name  # FSDD's manifest lists bare file names
            if not path.is_file():
                _fail_or_skip(f"{origin}: file {path} does not exist", bad)
                continue
            label = (row.get(label_col) or "").strip()
            if not _check_label(label, labels, origin, bad):
                continue
            index = row.get("index")
            records.append(AudioRecord(path, label, (row.get("speaker") or "").strip() or None,
                                       (row.get("split") or "").strip() or None,
                                       int(index) if index and index.isdigit() else None, origin))  # fmt: skip
    return records


def records_from_pattern(
    folder: str | Path, pattern: str, labels: Sequence[str] | None = None, bad: BadFiles | None = None
) -> list[AudioRecord]:
    """Records from the names of the files in `folder` that `pattern` (a full-match regex) matches.

    `pattern` needs a `label` group and may have `speaker`, `index` and `split` groups. Hidden files and files
    with non-audio suffixes (.csv, .md, .txt, .json) are ignored; other files that do not match are errors.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ManifestError(f"{folder}: not a folder of recordings")
    regex = re.compile(pattern)
    if "label" not in regex.groupindex:
        raise ManifestError(f"file-name pattern {pattern!r} needs a (?P<label>...) group")
    records = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir() or path.suffix.lower() in {".csv", ".md", ".txt", ".json"}:
            continue
        match = regex.fullmatch(path.name)
        if match is None:
            _fail_or_skip(f"{path}: file name does not match the pattern {pattern!r}", bad)
            continue
        groups = match.groupdict()
        if not _check_label(groups["label"], labels, str(path), bad):
            continue
        index = groups.get("index")
        records.append(AudioRecord(path, groups["label"], groups.get("speaker"), groups.get("split"),
                                   int(index) if index is not None else None, str(path)))  # fmt: skip
    if not records and not (bad and len(bad)):
        raise ManifestError(f"{folder}: no files match the pattern {pattern!r}")
    return records


def fsdd_records(root: str | Path | None = None, bad: BadFiles | None = None) -> list[AudioRecord]:
    """All 2,500 FSDD recordings with their standard split (take index 0-4 -> "test", else "train")."""
    folder = resolve(FSDD, root)
    if folder.is_dir() and (folder / "recordings").is_dir():
        folder = folder / "recordings"
    if not folder.is_dir() or not any(folder.glob("*_jackson_*.wav")):
        raise DatasetNotFoundError(f"{folder} is not FSDD's recordings folder (no *_jackson_*.wav files in it)")
    records = records_from_pattern(folder, FSDD_PATTERN, FSDD_LABELS, bad)
    return [
        AudioRecord(r.path, r.label, r.speaker, "test" if r.index < 5 else "train", r.index, r.origin) for r in records
    ]


def split_records(
    records: list[AudioRecord], test_speakers: Sequence[str] = (), val_fraction: float = 0.1, seed: int = 0
) -> dict[str, list[AudioRecord]]:
    """Train/val/test lists.

    With `test_speakers`, those speakers form the test set and the rest train/val (speaker-disjoint). Otherwise each
    record's own `split` (`train`/`val`/`test`, `dev` and `valid` meaning `val`) decides. When no record is marked
    `val`, a seeded `val_fraction` of the training records (stratified by label) is held out for validation.
    """
    if test_speakers:
        speakers = {r.speaker for r in records}
        missing = sorted(set(test_speakers) - speakers)
        if missing:
            raise ValueError(f"test speakers {missing} have no recordings; speakers are {sorted(map(str, speakers))}")
        splits = {"train": [r for r in records if r.speaker not in test_speakers], "val": [],
                  "test": [r for r in records if r.speaker in test_speakers]}  # fmt: skip
    else:
        aliases = {"train": "train", "val": "val", "valid": "val", "dev": "val", "test": "test"}
        splits = {"train": [], "val": [], "test": []}
        for r in records:
            if r.split not in aliases:
                raise ManifestError(f"{r.origin}: split {r.split!r} is not train/val/test (or give test_speakers)")
            splits[aliases[r.split]].append(r)
    if not splits["val"] and val_fraction > 0:
        rng = random.Random(seed)
        by_label: dict[str, list[AudioRecord]] = {}
        for r in splits["train"]:
            by_label.setdefault(r.label, []).append(r)
        held = set()
        for group in by_label.values():
            held.update(r.path for r in rng.sample(group, round(len(group) * val_fraction)))
        splits["val"] = [r for r in splits["train"] if r.path in held]
        splits["train"] = [r for r in splits["train"] if r.path not in held]
    return splits


def load_waveforms(
    records: Sequence[AudioRecord], sample_rate: int, normalization: Normalization, bad: BadFiles | None = None
) -> tuple[list[AudioRecord], list[torch.Tensor]]:
    """Read every record into a float `[samples]` waveform; unreadable files raise, or are dropped into `bad`."""
    kept, waves = [], []
    for record in records:
        try:
            waves.append(load_waveform(record.path, sample_rate, normalization))
        except AudioFileError as err:
            where = f" (listed at {record.origin})" if record.origin != str(record.path) else ""
            if bad is None:
                raise AudioFileError(err.path, err.reason + where) from err
            bad.add(str(err) + where)
            continue
        kept.append(record)
    return kept, waves


class AudioClipDataset(Dataset):
    """Fixed-length mu-law clips from in-memory waveforms.

    Each item: `tokens` int64 `[num_samples]`, `mask` bool `[num_samples]` (True on recorded samples, False on
    silence padding) and `label` int64 (-1 when unlabeled). Clips longer than `num_samples` are cropped, shorter ones
    padded with silence; `align` is "random" (training: random crop / random time shift), "center" or "start".
    `augment_config` adds random gain and noise (training only).
    """

    def __init__(
        self,
        waveforms: Sequence[torch.Tensor],
        labels: Sequence[int] | None,
        num_samples: int,
        align: str = "center",
        augment_config: AugmentConfig | None = None,
        tokenizer: MuLawTokenizer | None = None,
    ) -> None:
        if labels is not None and len(labels) != len(waveforms):
            raise ValueError(f"{len(waveforms)} waveforms but {len(labels)} labels")
        self.waveforms, self.labels = list(waveforms), labels
        self.num_samples, self.align, self.augment_config = num_samples, align, augment_config
        self.tokenizer = tokenizer or MuLawTokenizer()

    def __len__(self) -> int:
        return len(self.waveforms)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        wave, mask = place(self.waveforms[i], self.num_samples, self.align)
        if self.augment_config is not None:
            wave = augment(wave, self.augment_config)
        label = -1 if self.labels is None else self.labels[i]
        return {"tokens": self.tokenizer.encode(wave), "mask": mask, "label": torch.tensor(label)}


@dataclass
class AudioDataConfig:
    """Where the recordings come from and how they become batches (nested in the audio recipes' configs).

    Attributes:
        source: "fsdd" (the named dataset), "manifest" (a CSV at `path`) or "folder" (file names parsed by `pattern`).
        path: FSDD's folder (optional: resolved by name), the manifest CSV, or the folder of recordings.
        pattern: full-match regex over file names for `source="folder"` (groups: label, speaker, index, split).
        labels: the label set, in class-id order; `None` infers the sorted labels found (FSDD: "0".."9").
        sample_rate: every recording is resampled to this rate (Hz).
        num_samples: clip length in samples after crop/pad (a multiple of the model's frame).
        normalization: per-recording scaling before mu-law ("peak", "minmax" as in SaShiMi, or "none").
        test_speakers: hold these speakers out as the test set (speaker-disjoint split); empty: the records' split.
        val_fraction: share of the training records held out for validation when none are marked `val`.
        augment: random gain/noise on training clips (random crop/time shift is always on for training).
        skip_bad_files: drop unreadable files and bad rows (counted and reported) instead of stopping.
    """

    source: str = "fsdd"
    path: str | None = None
    pattern: str = FSDD_PATTERN
    labels: list[str] | None = None
    sample_rate: int = 8000
    num_samples: int = 8192
    normalization: str = "peak"
    test_speakers: list[str] = field(default_factory=list)
    val_fraction: float = 0.1
    batch_size: int = 32
    num_workers: int = 0
    augment: bool = True
    augmentation: AugmentConfig = field(default_factory=AugmentConfig)
    skip_bad_files: bool = False
    seed: int = 0


def read_records(cfg: AudioDataConfig, bad: BadFiles | None = None) -> list[AudioRecord]:
    """The records `cfg` describes (labels checked against `cfg.labels` when given)."""
    if cfg.source == "fsdd":
        return fsdd_records(cfg.path, bad)
    if cfg.path is None:
        raise ValueError(f"data.path is required for data.source={cfg.source!r}")
    if cfg.source == "manifest":
        return read_manifest(cfg.path, cfg.labels, bad)
    if cfg.source == "folder":
        return records_from_pattern(cfg.path, cfg.pattern, cfg.labels, bad)
    raise ValueError(f"data.source must be 'fsdd', 'manifest' or 'folder', got {cfg.source!r}")


def _natural_key(label: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", label))


class AudioDataModule(pl.LightningDataModule):
    """Train/val/test `AudioClipDataset`s and their loaders, from an `AudioDataConfig`.

    Args:
        cfg: the data settings.
        eval_align: placement of evaluation clips ("center" for classification, "start" for waveform modeling).
        augment: whether training clips get gain/noise (classification yes; waveform modeling models clean audio).

    After `setup()`: `labels` (class names in id order), `splits` (the records), `bad` (dropped files, or None).
    """

    def __init__(self, cfg: AudioDataConfig, eval_align: str = "center", augment: bool | None = None) -> None:
        super().__init__()
        self.cfg, self.eval_align = cfg, eval_align
        self.augment = cfg.augment if augment is None else augment
        self.bad = BadFiles() if cfg.skip_bad_files else None
        self.labels: list[str] = []
        self.splits: dict[str, list[AudioRecord]] = {}
        self.datasets: dict[str, AudioClipDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        cfg = self.cfg
        records = read_records(cfg, self.bad)
        if cfg.labels is not None:
            self.labels = list(cfg.labels)
        elif cfg.source == "fsdd":
            self.labels = FSDD_LABELS
        else:
            self.labels = sorted({r.label for r in records}, key=_natural_key)
        label_ids = {label: i for i, label in enumerate(self.labels)}
        splits = split_records(records, cfg.test_speakers, cfg.val_fraction, cfg.seed)
        for name, split in splits.items():
            kept, waves = load_waveforms(split, cfg.sample_rate, cfg.normalization, self.bad)  # type: ignore[arg-type]
            self.splits[name] = kept
            augmentation = cfg.augmentation if (name == "train" and self.augment) else None
            align = "random" if name == "train" else self.eval_align
            labels = [label_ids[r.label] for r in kept]
            self.datasets[name] = AudioClipDataset(waves, labels, cfg.num_samples, align, augmentation)
        log.info("audio splits: %s", {k: len(v) for k, v in self.splits.items()})
        if not self.splits["train"]:
            raise ManifestError("no training recordings left after splitting (check the split column/test_speakers)")

    def _loader(self, name: str, shuffle: bool = False) -> DataLoader:
        dataset, sampler = self.datasets[name], None
        if not shuffle:  # evaluation: with several processes each clip is scored once over all ranks
            dataset, sampler = eval_shards(dataset, self.trainer, _silent_unlabeled)
        return DataLoader(dataset, batch_size=self.cfg.batch_size, shuffle=shuffle, sampler=sampler,
                          num_workers=self.cfg.num_workers, drop_last=shuffle and len(dataset) > self.cfg.batch_size,
                          persistent_workers=self.cfg.num_workers > 0)  # fmt: skip

    @property
    def eval_split(self) -> str:
        """The split validation uses: `val`, or `test` when there is no validation split."""
        return "val" if self.datasets["val"] else "test"

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_split)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


def _silent_unlabeled(item: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Padding for evaluation shards: no recorded sample (nothing is scored) and no label."""
    return {"tokens": item["tokens"], "mask": torch.zeros_like(item["mask"]), "label": torch.tensor(-1)}
