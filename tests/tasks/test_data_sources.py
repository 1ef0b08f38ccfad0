"""Named datasets resolve from an explicit path, then MAMBALAB_DATA, else fail with a helpful message."""

from __future__ import annotations

import pytest

from tasks.data_sources import DatasetNotFoundError, NamedDataset, resolve

DATASET = NamedDataset("toy", "toy_file.txt", "https://example.invalid/toy_file.txt", "a toy file")


def test_explicit_path_wins(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("x")
    assert resolve(DATASET, path) == path


def test_explicit_missing_path_is_an_error(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        resolve(DATASET, tmp_path / "absent.txt")


def test_found_anywhere_under_data_dir(tmp_path, monkeypatch):
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    (nested / "toy_file.txt").write_text("x")
    monkeypatch.setenv("MAMBALAB_DATA", str(tmp_path))
    assert resolve(DATASET, download=False) == (nested / "toy_file.txt").resolve()


def test_missing_without_download_explains_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMBALAB_DATA", str(tmp_path))
    monkeypatch.setenv("MAMBALAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DatasetNotFoundError, match="MAMBALAB_DATA.*toy_file.txt"):
        resolve(DATASET, download=False)
