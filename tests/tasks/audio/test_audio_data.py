"""Audio datasets: manifests, file-name patterns, FSDD resolution, splits, bad input, crop/pad and augmentation."""

from __future__ import annotations

import shutil

import pytest
import torch

from tasks.audio.data import (
    FSDD_PATTERN,
    AudioClipDataset,
    AudioDataConfig,
    AudioDataModule,
    BadFiles,
    ManifestError,
    fsdd_records,
    load_waveforms,
    read_manifest,
    records_from_pattern,
    split_records,
)
from tasks.audio.io import AudioFileError
from tasks.audio.transforms import AugmentConfig, augment, place
from tasks.data_sources import DatasetNotFoundError


@pytest.fixture
def recordings(data_dir):
    return data_dir / "audio" / "fsdd" / "recordings"


@pytest.fixture
def small_folder(tmp_path, recordings):
    """Two digits x two speakers x three takes, copied (12 small WAVs) so tests can add bad files beside them."""
    folder = tmp_path / "clips"
    folder.mkdir()
    for digit in (3, 7):
        for speaker in ("jackson", "theo"):
            for index in (0, 5, 9):
                shutil.copy(recordings / f"{digit}_{speaker}_{index}.wav", folder)
    return folder


def test_fsdd_standard_split(data_dir):
    records = fsdd_records()
    assert len(records) == 2500 and {r.label for r in records} == {str(d) for d in range(10)}
    splits = split_records(records, val_fraction=0.1)
    assert len(splits["test"]) == 250 and all(r.index < 5 for r in splits["test"])
    assert len(splits["train"]) + len(splits["val"]) == 2250 and len(splits["val"]) == 220


def test_fsdd_speaker_split_is_disjoint(data_dir):
    splits = split_records(fsdd_records(), test_speakers=["theo"], val_fraction=0.1)
    assert {r.speaker for r in splits["test"]} == {"theo"} and len(splits["test"]) == 500
    assert "theo" not in {r.speaker for r in splits["train"] + splits["val"]}
    with pytest.raises(ValueError, match="nicolas"):
        split_records(fsdd_records(), test_speakers=["nicolas"])


def test_fsdd_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMBALAB_DATA", str(tmp_path))
    monkeypatch.setenv("MAMBALAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("tasks.data_sources._download", lambda dataset: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(DatasetNotFoundError, match="MAMBALAB_DATA"):
        fsdd_records()


def test_manifest_reads_fsdd_layout(data_dir):
    records = read_manifest(data_dir / "audio" / "fsdd" / "manifest.csv")
    assert len(records) == 2500 and records[0].path.is_file() and records[0].split == "test"


def _write_manifest(folder, rows):
    path = folder / "manifest.csv"
    path.write_text("path,label,speaker,split\n" + "".join(f"{r}\n" for r in rows))
    return path


def test_manifest_errors_name_file_and_row(small_folder):
    good = "3_jackson_0.wav,three,jackson,train"
    missing = _write_manifest(small_folder, [good, "gone.wav,three,jackson,train"])
    with pytest.raises(ManifestError, match=r"manifest.csv:3: file .*gone.wav does not exist"):
        read_manifest(missing)
    unknown = _write_manifest(small_folder, [good, "7_theo_0.wav,seven,theo,test"])
    with pytest.raises(ManifestError, match=r"manifest.csv:3: label 'seven' is not in the label set"):
        read_manifest(unknown, labels=["three"])
    bad = BadFiles()
    assert len(read_manifest(unknown, labels=["three"], bad=bad)) == 1 and len(bad) == 1
    (small_folder / "cols.csv").write_text("file_name,y\na.wav,1\n")
    with pytest.raises(ManifestError, match="needs a path column"):
        read_manifest(small_folder / "cols.csv")


def test_corrupt_and_empty_files_name_file_and_row(small_folder):
    (small_folder / "empty.wav").write_bytes(b"")
    (small_folder / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt garbage" * 4)
    manifest = _write_manifest(small_folder, ["3_jackson_0.wav,3,jackson,train", "empty.wav,3,jackson,train",
                                              "corrupt.wav,7,theo,train"])  # fmt: skip
    records = read_manifest(manifest)
    with pytest.raises(AudioFileError, match=r"empty.wav: the file is empty .*manifest.csv:3"):
        load_waveforms(records, 8000, "peak")
    bad = BadFiles()
    kept, waves = load_waveforms(records, 8000, "peak", bad)
    assert len(kept) == len(waves) == 1 and len(bad) == 2 and "corrupt.wav" in bad.messages[1]


def test_pattern_folder(small_folder):
    records = records_from_pattern(small_folder, FSDD_PATTERN)
    assert len(records) == 12 and {r.speaker for r in records} == {"jackson", "theo"}
    (small_folder / "notes.txt").write_text("ignored")
    (small_folder / "stray.wav").write_bytes(b"")
    with pytest.raises(ManifestError, match="stray.wav: file name does not match"):
        records_from_pattern(small_folder, FSDD_PATTERN)
    bad = BadFiles()
    assert len(records_from_pattern(small_folder, FSDD_PATTERN, bad=bad)) == 12 and len(bad) == 1


def test_datamodule_speaker_split_and_batches(small_folder):
    cfg = AudioDataConfig(source="folder", path=str(small_folder), test_speakers=["theo"], num_samples=1024,
                          batch_size=4, val_fraction=0.34)  # fmt: skip
    data = AudioDataModule(cfg)
    data.setup()
    assert data.labels == ["3", "7"] and len(data.splits["test"]) == 6
    assert len(data.splits["val"]) == 2 and len(data.splits["train"]) == 4
    batch = next(iter(data.train_dataloader()))
    assert batch["tokens"].shape == (4, 1024) and batch["tokens"].dtype == torch.int64
    assert set(batch["label"].tolist()) <= {0, 1}


def test_place_and_augment():
    wave = torch.linspace(-1, 1, 100)
    out, mask = place(wave, 160, "center")
    assert out.shape == (160,) and int(mask.sum()) == 100 and torch.equal(out[30:130], wave)
    out, mask = place(wave, 40, "start")
    assert torch.equal(out, wave[:40]) and bool(mask.all())
    shifts = {int(place(wave, 160, "random")[1].float().argmax()) for _ in range(20)}
    assert len(shifts) > 1  # random time shift
    noisy = augment(wave * 0.5, AugmentConfig(gain_db=6.0, noise_prob=1.0, snr_db_min=10, snr_db_max=10))
    assert noisy.abs().max() <= 1 and not torch.allclose(noisy, wave * 0.5)
    dataset = AudioClipDataset([wave, wave[:10]], [0, 1], 64, "random", AugmentConfig())
    item = dataset[1]
    assert item["tokens"].shape == (64,) and int(item["mask"].sum()) == 10 and int(item["label"]) == 1
