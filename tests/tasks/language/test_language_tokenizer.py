"""Byte-level BPE: training, save/load, round trips, and the GPT-NeoX-20B tokenizer of the public Mamba models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tasks.language.data import read_text, train_val_split
from tasks.language.tokenizer import EOS_TOKEN, PAD_TOKEN, TextTokenizer


@pytest.fixture(scope="module")
def shakespeare():
    path = Path(os.environ["MAMBALAB_DATA"]) / "text" / "tinyshakespeare.txt"
    if not path.is_file():
        pytest.skip(f"{path} does not exist")
    return read_text(path)


@pytest.fixture(scope="module")
def bpe(shakespeare):
    return TextTokenizer.train_bpe(shakespeare[:200_000].splitlines(keepends=True), vocab_size=600)


def test_trained_bpe_has_vocab_size_and_special_ids(bpe):
    assert bpe.vocab_size == 600
    assert (bpe.tokenizer.token_to_id(EOS_TOKEN), bpe.tokenizer.token_to_id(PAD_TOKEN)) == (0, 1)
    assert (bpe.eos_id, bpe.pad_id) == (0, 1)


@pytest.mark.parametrize("text", ["ROMEO:\nBut soft, what light", "naïve café — 東京 🙂", "  spaces\t\ttabs\n\n"])
def test_round_trip_any_text(bpe, text):
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text


def test_bpe_compresses_and_bytes_do_not(shakespeare):
    sample = shakespeare[:50_000]
    byte_level = TextTokenizer.train_bpe(sample.splitlines(keepends=True), vocab_size=258)
    assert byte_level.vocab_size == 258
    assert len(byte_level.encode(sample)) == len(sample.encode())  # no merges: one token per byte
    bpe = TextTokenizer.train_bpe(sample.splitlines(keepends=True), vocab_size=1000)
    assert len(bpe.encode(sample)) < 0.6 * len(sample)


def test_save_and_load_give_the_same_ids(bpe, tmp_path):
    path = bpe.save(tmp_path / "tok")
    assert path == tmp_path / "tok" / "tokenizer.json"
    loaded = TextTokenizer.from_file(path)
    text = "KING RICHARD III:\nNow is the winter of our discontent"
    assert loaded.encode(text) == bpe.encode(text)
    assert loaded.fingerprint == bpe.fingerprint


def test_bad_settings_and_files_raise_clearly(tmp_path):
    with pytest.raises(ValueError, match="below 256 byte symbols"):
        TextTokenizer.train_bpe(["abc"], vocab_size=100)
    with pytest.raises(ValueError, match="must include the end-of-document token"):
        TextTokenizer.train_bpe(["abc"], vocab_size=300, special_tokens=["<s>"])
    with pytest.raises(FileNotFoundError, match="no tokenizer file"):
        TextTokenizer.from_file(tmp_path / "missing.json")
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        TextTokenizer.from_file(broken)


def test_gpt_neox_tokenizer_matches_published_counts(data_dir, shakespeare):
    neox = TextTokenizer.from_file(data_dir / "text" / "tokenizers" / "gpt-neox-20b" / "tokenizer.json")
    assert neox.vocab_size == 50277 and (neox.eos_id, neox.pad_id) == (0, 1)
    train, val = train_val_split(shakespeare, 0.1)
    # Counts measured for the data folder's SOURCES.md (304,141 train / 36,099 validation tokens).
    assert (len(neox.encode(train)), len(neox.encode(val))) == (304_141, 36_099)
    assert neox.decode(neox.encode(val)) == val
