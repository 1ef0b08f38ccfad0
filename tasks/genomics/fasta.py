"""FASTA reading through Biopython: plain, gzip and bgzip files, and faidx-style random access.

* `read_fasta(path)` streams every record with `Bio.SeqIO` (gzip and bgzip are detected from the first bytes, not the
  file name, since downloads of a `.fa.gz` name may arrive uncompressed) and encodes it with `DNATokenizer`.
* `IndexedFasta(path)` reads regions of an indexed genome without decompressing the rest: the samtools `.fai` gives
  each record's byte layout and, for bgzip files, the `.gzi` (or a scan of the BGZF blocks when it is missing) maps
  uncompressed offsets to `Bio.bgzf` virtual offsets. Without a `.fai` it falls back to `Bio.SeqIO.index`.

Every failure (missing or empty file, bad gzip, non-FASTA text, no valid bases) is a `FastaError` naming the file.
"""

from __future__ import annotations

import bisect
import gzip
import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from Bio import SeqIO, bgzf

from tasks.genomics.tokenizer import DNATokenizer, InvalidSequenceError

_GZIP_MAGIC = b"\x1f\x8b"


class FastaError(ValueError):
    """A FASTA file cannot be used; the message names the file (and record where there is one)."""


@dataclass
class EncodedRecord:
    """One FASTA record as token ids: `ids` is `[length]` uint8 (see `DNATokenizer`)."""

    name: str
    ids: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def _is_bgzf(path: Path) -> bool:
    # BGZF: a gzip member with FEXTRA whose extra subfield is "BC" (SAM spec, section 4.1).
    with open(path, "rb") as fh:
        head = fh.read(16)
    return len(head) == 16 and head[:4] == b"\x1f\x8b\x08\x04" and head[12:14] == b"BC"


def open_fasta_text(path: str | os.PathLike) -> io.TextIOBase:
    """Open a FASTA file (plain, gzip or bgzip) as text."""
    path = Path(path)
    if not path.is_file():
        raise FastaError(f"{path}: FASTA file does not exist")
    return gzip.open(path, "rt", encoding="ascii", errors="replace") if _is_gzip(path) else open(path)


def read_fasta(path: str | os.PathLike, tokenizer: DNATokenizer | None = None) -> list[EncodedRecord]:
    """Read and encode every record of a FASTA file.

    Raises:
        FastaError: the file is missing, not FASTA, an unreadable gzip, empty, or holds no A/C/G/T at all.
        InvalidSequenceError: a record holds a character the tokenizer refuses (names file, record, position).
    """
    path = Path(path)
    tokenizer = tokenizer or DNATokenizer()
    records = []
    try:
        with open_fasta_text(path) as handle:
            for rec in SeqIO.parse(handle, "fasta"):
                try:
                    ids = tokenizer.encode(str(rec.seq), record=rec.id)
                except InvalidSequenceError as err:
                    raise InvalidSequenceError(f"{path}: {err}") from None
                records.append(EncodedRecord(rec.id, ids))
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise FastaError(f"{path}: unreadable gzip data ({err}); re-download or re-compress the file") from None
    except UnicodeDecodeError as err:
        raise FastaError(f"{path}: not a text FASTA file ({err})") from None
    except ValueError as err:
        if isinstance(err, (FastaError, InvalidSequenceError)):
            raise
        raise FastaError(f"{path}: not a valid FASTA file ({err})") from None
    _check_records(path, records)
    return records


def _check_records(path: Path, records: list[EncodedRecord]) -> None:
    if not records:
        raise FastaError(f"{path}: no FASTA records (the file is empty or has no '>' header lines)")
    base_ids = np.array(DNATokenizer().base_ids, dtype=np.uint8)
    if not any(np.isin(rec.ids, base_ids).any() for rec in records):
        names = ", ".join(rec.name for rec in records[:5])
        raise FastaError(f"{path}: no valid bases (A/C/G/T) in any of {len(records)} record(s) ({names})")


@dataclass(frozen=True)
class _FaiEntry:
    length: int
    offset: int
    line_bases: int
    line_width: int


def _read_fai(path: Path) -> dict[str, _FaiEntry]:
    entries = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split("\t")
        if len(fields) < 5:
            raise FastaError(f"{path}:{lineno}: a .fai line needs 5 tab-separated fields, got {len(fields)}")
        entries[fields[0]] = _FaiEntry(*(int(f) for f in fields[1:5]))
    return entries


def _bgzf_block_table(path: Path) -> tuple[list[int], list[int]]:
    """Block starts as (uncompressed offsets, compressed offsets), from the `.gzi` or a scan of the blocks."""
    gzi = path.with_name(path.name + ".gzi")
    if gzi.is_file():
        data = gzi.read_bytes()
        (count,) = struct.unpack_from("<Q", data)
        pairs = struct.unpack_from(f"<{2 * count}Q", data, 8)
        # The first block (0, 0) is implicit in the .gzi format.
        return [0, *pairs[1::2]], [0, *pairs[0::2]]
    uncompressed, compressed, total = [], [], 0
    with open(path, "rb") as fh:
        for start, _raw_len, _data_start, data_len in bgzf.BgzfBlocks(fh):
            uncompressed.append(total)
            compressed.append(start)
            total += data_len
    return uncompressed, compressed


class IndexedFasta:
    """Random access into an indexed FASTA (plain or bgzip with a samtools `.fai`; `SeqIO.index` otherwise).

    `fetch(name, start, end)` returns the bases of `[start, end)` (0-based, half-open) as text.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FastaError(f"{self.path}: FASTA file does not exist")
        fai = self.path.with_name(self.path.name + ".fai")
        self._bgzf = _is_bgzf(self.path)
        if _is_gzip(self.path) and not self._bgzf:
            raise FastaError(f"{self.path}: plain gzip has no random access; recompress with `bgzip` or use read_fasta")
        self._fai = _read_fai(fai) if fai.is_file() else None
        self._index = None if self._fai else SeqIO.index(str(self.path), "fasta")
        if self._bgzf and self._fai:
            self._block_u, self._block_c = _bgzf_block_table(self.path)

    @property
    def lengths(self) -> dict[str, int]:
        if self._fai is not None:
            return {name: e.length for name, e in self._fai.items()}
        return {name: len(self._index[name]) for name in self._index}

    def _read(self, byte_start: int, size: int) -> bytes:
        if not self._bgzf:
            with open(self.path, "rb") as fh:
                fh.seek(byte_start)
                return fh.read(size)
        i = bisect.bisect_right(self._block_u, byte_start) - 1
        virtual = bgzf.make_virtual_offset(self._block_c[i], byte_start - self._block_u[i])
        with bgzf.BgzfReader(str(self.path), "rb") as reader:
            reader.seek(virtual)
            return reader.read(size)

    def fetch(self, name: str, start: int = 0, end: int | None = None) -> str:
        lengths = self.lengths
        if name not in lengths:
            raise FastaError(f"{self.path}: no record {name!r}; records: {', '.join(list(lengths)[:10])}")
        end = lengths[name] if end is None else end
        if not 0 <= start <= end <= lengths[name]:
            raise FastaError(f"{self.path}: region {name}:{start}-{end} is outside [0, {lengths[name]}]")
        if self._fai is None:
            return str(self._index[name].seq[start:end])
        e = self._fai[name]
        if start == end:
            return ""

        def byte_of(pos: int) -> int:
            return e.offset + (pos // e.line_bases) * e.line_width + pos % e.line_bases

        first, last = byte_of(start), byte_of(end - 1)
        raw = self._read(first, last - first + 1)
        return raw.replace(b"\n", b"").replace(b"\r", b"").decode("ascii")


def load_genome(path: str | os.PathLike, tokenizer: DNATokenizer | None = None) -> list[EncodedRecord]:
    """Encode a whole genome: through the index when the file has a `.fai`, else by streaming with SeqIO."""
    path = Path(path)
    tokenizer = tokenizer or DNATokenizer()
    if not path.with_name(path.name + ".fai").is_file():
        return read_fasta(path, tokenizer)
    fasta = IndexedFasta(path)
    records = []
    for name, length in fasta.lengths.items():
        try:
            records.append(EncodedRecord(name, tokenizer.encode(fasta.fetch(name, 0, length), record=name)))
        except InvalidSequenceError as err:
            raise InvalidSequenceError(f"{path}: {err}") from None
    _check_records(path, records)
    return records
