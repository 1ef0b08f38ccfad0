"""Shared test setup: the data directory, seeding, and the `gpu` marker's skip rule."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# Tests read real data in place from ../shared/data (never copied into the repo); CI sets the same.
os.environ.setdefault("MAMBALAB_DATA", str((REPO_ROOT.parent / "shared" / "data").resolve()))
DATA_DIR = Path(os.environ["MAMBALAB_DATA"])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"MAMBALAB_DATA={DATA_DIR} does not exist")
    return DATA_DIR
