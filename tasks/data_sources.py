"""Find named datasets: an explicit path, the `MAMBALAB_DATA` directory, the user cache, or a download.

Every named dataset (a genome, the spoken-digit recordings, a text corpus) is resolved the same way:

1. an explicit path given by the user, which must exist;
2. a file or folder of the dataset's canonical name anywhere under `$MAMBALAB_DATA`;
3. the same name in the user cache (`$MAMBALAB_CACHE`, default `~/.cache/mambalab`);
4. a download from the canonical public source into the cache, with a progress bar, then a content check;
5. otherwise a `DatasetNotFoundError` that says where the file was looked for and how to provide it.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class DatasetNotFoundError(FileNotFoundError):
    """A named dataset is neither on disk nor downloadable here."""


@dataclass(frozen=True)
class NamedDataset:
    """A dataset known by name.

    Attributes:
        name: the short name users type (`ecoli_k12`, `fsdd`, `tinyshakespeare`).
        filename: the canonical file (or folder) name searched for on disk.
        url: where it downloads from; a `.tar.gz` url is unpacked and `filename` looked up inside.
        description: one line for error messages and `--help`.
        verify: optional content check run on a downloaded copy; raises ValueError when the content is wrong.
    """

    name: str
    filename: str
    url: str
    description: str = ""
    verify: Callable[[Path], None] | None = None


def data_root() -> Path | None:
    value = os.environ.get("MAMBALAB_DATA")
    return Path(value).expanduser() if value else None


def cache_root() -> Path:
    return Path(os.environ.get("MAMBALAB_CACHE", Path.home() / ".cache" / "mambalab")).expanduser()


@functools.lru_cache(maxsize=256)
def _find_under(root: Path, filename: str) -> Path | None:
    if not root.is_dir():
        return None
    matches = sorted(root.rglob(filename))
    return matches[0] if matches else None


def resolve(dataset: NamedDataset, explicit: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """Return a local path for `dataset` (see the module docstring for the search order)."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.exists():
            raise DatasetNotFoundError(f"{dataset.name}: the given path {path} does not exist")
        return path
    searched = []
    for root in (data_root(), cache_root()):
        if root is None:
            continue
        searched.append(str(root))
        found = _find_under(root.resolve(), dataset.filename)
        if found is not None:
            return found
    if download:
        try:
            return _download(dataset)
        except OSError as err:
            reason = f"download from {dataset.url} failed ({err})"
    else:
        reason = "downloads are disabled"
    raise DatasetNotFoundError(
        f"dataset {dataset.name!r} ({dataset.description or dataset.filename}) was not found: looked for "
        f"{dataset.filename!r} under {', '.join(searched) or '(MAMBALAB_DATA unset)'}; {reason}. Provide it by "
        f"setting MAMBALAB_DATA to a folder that contains {dataset.filename!r}, or pass its path explicitly "
        f"(it is published at {dataset.url})."
    )


def _download(dataset: NamedDataset) -> Path:
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    target_dir = cache_root() / dataset.name
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target_dir) as tmp:
        part = Path(tmp) / "download"
        with urllib.request.urlopen(dataset.url, timeout=60) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with Progress(
                "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn()
            ) as progress:
                task = progress.add_task(f"downloading {dataset.name}", total=total)
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    progress.advance(task, len(chunk))
        if dataset.url.endswith((".tar.gz", ".tgz")):
            with tarfile.open(part) as archive:
                archive.extractall(target_dir, filter="data")
            _find_under.cache_clear()
            found = _find_under(target_dir.resolve(), dataset.filename)
            if found is None:
                raise DatasetNotFoundError(f"{dataset.url} unpacked, but holds no {dataset.filename!r}")
        else:
            found = target_dir / dataset.filename
            found.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(part, found)
    if dataset.verify is not None:
        try:
            dataset.verify(found)
        except ValueError:
            found.unlink() if found.is_file() else shutil.rmtree(found)
            raise
    log.info("downloaded %s to %s", dataset.name, found)
    return found
