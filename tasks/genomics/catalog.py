"""Named genomes: `ecoli_k12`, `human_chr2_segment`, ... resolved through `tasks.data_sources.resolve`.

A name resolves to a file in this order: an explicit path -> a file of the canonical name anywhere under
`$MAMBALAB_DATA` -> the user cache -> a download from the canonical public source (progress bar, then a content
check of the decompressed records: names and lengths) -> a `DatasetNotFoundError` that says how to provide it.

Public sources: RefSeq assemblies from the NCBI FTP site, single records through NCBI E-utilities, and small test
genomes from the public repositories that published them (pinned to a commit so the content cannot drift).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tasks.data_sources import NamedDataset, resolve

_EFETCH = "https://eutils.ncbi.nlm.nih.gov/entrez/eutils/efetch.fcgi?db=nuccore&rettype=fasta&retmode=text&id="
_NCBI_GCF = "https://ftp.ncbi.nlm.nih.gov/genomes/all/GCF"


def _github(repo: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


def _refseq(accession: str, assembly: str) -> str:
    digits = accession.split("_")[1].split(".")[0]
    parts = "/".join(digits[i : i + 3] for i in range(0, 9, 3))
    return f"{_NCBI_GCF}/{parts}/{accession}_{assembly}/{accession}_{assembly}_genomic.fna.gz"


def _expect(n_records: int, total_bp: int) -> Callable[[Path], None]:
    """A content check for a downloaded genome: its record count and total length (compression-independent)."""

    def verify(path: Path) -> None:
        from Bio import SeqIO

        from tasks.genomics.fasta import open_fasta_text

        with open_fasta_text(path) as handle:
            lengths = [len(rec.seq) for rec in SeqIO.parse(handle, "fasta")]
        if len(lengths) != n_records or sum(lengths) != total_bp:
            raise ValueError(
                f"{path}: expected {n_records} record(s) and {total_bp} bp, got {len(lengths)} and {sum(lengths)} bp"
            )

    return verify


class UnknownGenomeError(ValueError):
    """A genome name that is not in `GENOMES`."""


@dataclass(frozen=True)
class Genome:
    """A named genome: the `NamedDataset` that locates it plus a species label for classification tasks."""

    dataset: NamedDataset
    species: str


def _genome(name, filename, url, description, species, n_records, total_bp) -> tuple[str, Genome]:
    dataset = NamedDataset(name, filename, url, description, _expect(n_records, total_bp))
    return name, Genome(dataset, species)


_MCB185 = ("iankorf/MCB185", "fc3c33ed5dacad55e15ba971178b42b08bff2825")
_MINIMAP2 = ("lh3/minimap2", "e5066c79765f78fad9a288331f860d78670cc45f")

GENOMES: dict[str, Genome] = dict(
    [
        _genome(
            "ecoli_k12",
            "GCF_000005845.2_ASM584v2_genomic.fna.gz",
            _refseq("GCF_000005845.2", "ASM584v2"),
            "Escherichia coli K-12 MG1655, RefSeq GCF_000005845.2 (4.64 Mb)",
            "Escherichia coli",
            1,
            4_641_652,
        ),
        _genome(
            "sphingobacteriaceae",
            "GCF_000783305.1_ASM78330v1_genomic.fna.gz",
            _refseq("GCF_000783305.1", "ASM78330v1"),
            "Sphingobacteriaceae bacterium DW12 draft, RefSeq GCF_000783305.1 (78 contigs, 5.32 Mb)",
            "Sphingobacteriaceae bacterium",
            78,
            5_316_652,
        ),
        _genome(
            "human_chr2_segment",
            "chr2_1-2333275.fa.gz",
            _github("bfairkun/my_utils", "f5976b4cafd2e276796b4c7118cb053c4af2026a", "tests/data/chr2_1-2333275.fa.gz"),
            "human hg38 chr2:1-2,333,275, soft-masked, bgzip (+ .fai/.gzi for random access)",
            "Homo sapiens",
            1,
            2_333_275,
        ),
        _genome(
            "yeast_chr1",
            "example_nucleotide_sequence.fasta.gz",
            _EFETCH + "NC_001133.9",
            "Saccharomyces cerevisiae S288C chromosome I, NC_001133.9 (230 kb)",
            "Saccharomyces cerevisiae",
            1,
            230_218,
        ),
        _genome(
            "lambda_phage",
            "lambda_virus.fa.gz",
            _EFETCH + "NC_001416.1",
            "Enterobacteria phage lambda, NC_001416.1 (48.5 kb)",
            "Escherichia phage lambda",
            1,
            48_502,
        ),
        _genome(
            "human_mt",
            "MT-human.fa.gz",
            _github(*_MINIMAP2, "test/MT-human.fa"),
            "human mitochondrial genome, rCRS (16.6 kb)",
            "Homo sapiens",
            1,
            16_569,
        ),
        _genome(
            "orangutan_mt",
            "MT-orang.fa.gz",
            _github(*_MINIMAP2, "test/MT-orang.fa"),
            "orangutan mitochondrial genome (16.5 kb)",
            "Pongo",
            1,
            16_499,
        ),
        _genome(
            "arabidopsis_1pct",
            "A.thaliana.fa.gz",
            _github(*_MCB185, "data/A.thaliana.fa.gz"),
            "Arabidopsis thaliana, first 1% of each chromosome (1.20 Mb)",
            "Arabidopsis thaliana",
            7,
            1_196_674,
        ),
        _genome(
            "celegans_1pct",
            "C.elegans.fa.gz",
            _github(*_MCB185, "data/C.elegans.fa.gz"),
            "Caenorhabditis elegans, first 1% of each chromosome (1.00 Mb)",
            "Caenorhabditis elegans",
            7,
            1_002_861,
        ),
        _genome(
            "drosophila_1pct",
            "D.melanogaster.fa.gz",
            _github(*_MCB185, "data/D.melanogaster.fa.gz"),
            "Drosophila melanogaster, first 1% of each chromosome arm (1.38 Mb)",
            "Drosophila melanogaster",
            7,
            1_375_477,
        ),
    ]
)


def genome_path(name: str, explicit: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """Local path of the named genome (see the module docstring); `explicit` wins when given.

    Raises:
        UnknownGenomeError: `name` is not in the catalog (the message lists the known names).
        DatasetNotFoundError: the genome is not on disk and cannot be downloaded.
    """
    if name not in GENOMES:
        if explicit is not None:
            return resolve(NamedDataset(name, Path(explicit).name, url=""), explicit)
        raise UnknownGenomeError(f"unknown genome {name!r}; known genomes: {', '.join(GENOMES)} (or pass a FASTA path)")
    return resolve(GENOMES[name].dataset, explicit, download=download)
