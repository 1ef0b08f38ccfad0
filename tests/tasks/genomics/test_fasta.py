"""FASTA reading: gzip/bgzip/plain, indexed random access, and clear errors for bad files."""

from __future__ import annotations

import gzip

import pytest

from tasks.genomics.fasta import FastaError, IndexedFasta, load_genome, read_fasta
from tasks.genomics.tokenizer import InvalidSequenceError

CHR2 = "genomics/my_utils/tests/data/chr2_1-2333275.fa.gz"


def test_multi_record_gzip(data_dir):
    records = read_fasta(data_dir / "genomics/sourmash/data/GCF_000783305.1_ASM78330v1_genomic.fna.gz")
    assert len(records) == 78 and sum(len(r) for r in records) == 5_316_652


def test_bgzip_random_access_matches_sequential_read(data_dir):
    path = data_dir / CHR2
    fasta = IndexedFasta(path)
    assert fasta.lengths == {"chr2": 2_333_275}
    whole = read_fasta(path)[0].ids
    from tasks.genomics.tokenizer import DNATokenizer

    tok = DNATokenizer()
    for start, end in ((0, 10), (9_995, 10_005), (1_860_100, 1_860_400), (2_333_200, 2_333_275)):
        assert tok.decode(tok.encode(fasta.fetch("chr2", start, end))) == tok.decode(whole[start:end])
    assert fasta.fetch("chr2", 0, 3) == "NNN"
    assert (load_genome(path)[0].ids == whole).all()
    with pytest.raises(FastaError, match="outside"):
        fasta.fetch("chr2", 0, 3_000_000)


def test_index_without_gzi_scans_blocks(tmp_path, data_dir):
    src = data_dir / CHR2
    (tmp_path / "chr2.fa.gz").write_bytes(src.read_bytes())
    (tmp_path / "chr2.fa.gz.fai").write_bytes(src.with_name(src.name + ".fai").read_bytes())
    assert IndexedFasta(tmp_path / "chr2.fa.gz").fetch("chr2", 1_860_100, 1_860_110) == "GGCCGAAAGG"


def test_plain_and_uncompressed_named_gz(tmp_path):
    # A download may arrive uncompressed under a .gz name: the reader looks at the bytes, not the suffix.
    (tmp_path / "a.fa.gz").write_text(">r1 desc\nACGTacgt\nNN\n>r2\nRYA\n")
    records = read_fasta(tmp_path / "a.fa.gz")
    assert [(r.name, len(r)) for r in records] == [("r1", 10), ("r2", 3)]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "no FASTA records"),
        (b">only_gaps\nNNNNNNNN\n>r2\nnnnn\n", "no valid bases"),
        (b"ACGT without a header\n", "no FASTA records|not a valid FASTA"),
    ],
)
def test_bad_files_name_the_file(tmp_path, content, match):
    path = tmp_path / "bad.fa"
    path.write_bytes(content)
    with pytest.raises(FastaError, match=match) as err:
        read_fasta(path)
    assert "bad.fa" in str(err.value)


def test_unreadable_gzip(tmp_path):
    data = gzip.compress(b">r\n" + b"ACGT" * 10_000)
    path = tmp_path / "truncated.fa.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FastaError, match="truncated.fa.gz: unreadable gzip"):
        read_fasta(path)
    path.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(FastaError, match="unreadable gzip"):
        read_fasta(path)


def test_invalid_base_names_file_record_position(tmp_path):
    path = tmp_path / "x.fa"
    path.write_text(">good\nACGT\n>bad\nACGT\nAC!T\n")
    with pytest.raises(InvalidSequenceError, match=r"x.fa: record 'bad': invalid character '!' at position 7"):
        read_fasta(path)
    with pytest.raises(FastaError, match="does not exist"):
        read_fasta(tmp_path / "missing.fa")
