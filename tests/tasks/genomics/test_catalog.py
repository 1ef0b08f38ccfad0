"""Named genomes resolve through MAMBALAB_DATA, explicit paths win, and unknown/missing ones fail clearly."""

from __future__ import annotations

import pytest

from tasks.data_sources import DatasetNotFoundError
from tasks.genomics.catalog import GENOMES, UnknownGenomeError, genome_path


def test_every_catalog_genome_is_under_the_data_dir(data_dir):
    for name in GENOMES:
        path = genome_path(name, download=False)
        assert path.is_file() and str(path).startswith(str(data_dir.resolve())), name
    assert genome_path("ecoli_k12").name == "GCF_000005845.2_ASM584v2_genomic.fna.gz"
    assert "GCF/000/005/845/GCF_000005845.2_ASM584v2/" in GENOMES["ecoli_k12"].dataset.url


def test_downloaded_content_is_checked(data_dir, tmp_path):
    GENOMES["lambda_phage"].dataset.verify(genome_path("lambda_phage"))
    wrong = tmp_path / "lambda_virus.fa.gz"
    wrong.write_text(">x\nACGT\n")
    with pytest.raises(ValueError, match="expected 1 record"):
        GENOMES["lambda_phage"].dataset.verify(wrong)


def test_explicit_path_and_errors(tmp_path, monkeypatch):
    own = tmp_path / "mine.fa"
    own.write_text(">r\nACGT\n")
    assert genome_path("anything", own) == own
    with pytest.raises(UnknownGenomeError, match="unknown genome 'ecoli'.*ecoli_k12"):
        genome_path("ecoli")
    monkeypatch.setenv("MAMBALAB_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("MAMBALAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DatasetNotFoundError, match="lambda_virus.fa.gz.*MAMBALAB_DATA"):
        genome_path("lambda_phage", download=False)
