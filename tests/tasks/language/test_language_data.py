"""Text corpora: reading, the train/validation split, the token cache, and packed windows with document masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.language.data import (
    IGNORE_INDEX,
    PackedTokenDataset,
    TextDataModule,
    load_corpus,
    read_text,
    split_documents,
    tokenize_cached,
    train_val_split,
)
from tasks.language.tokenizer import TextTokenizer


@pytest.fixture(scope="module")
def byte_tokenizer():
    return TextTokenizer.train_bpe(["hello world"], vocab_size=258)


def test_split_matches_nanogpt(data_dir):
    text = read_text(data_dir / "text" / "tinyshakespeare.txt")
    train, val = train_val_split(text, 0.1)
    assert (len(train), len(val)) == (1_003_854, 111_540)  # nanoGPT's tinyshakespeare split
    assert train + val == text


def test_read_text_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine\nalso fine\nbad \xff byte\n")
    with pytest.raises(ValueError, match=r"bad.txt:3: not UTF-8"):
        read_text(path)


def test_documents_and_corpus(tmp_path):
    assert split_documents("a\n\n\nb\n\nc", r"\n\n+") == ["a", "b", "c"]
    assert split_documents("whole", None) == ["whole"]
    (tmp_path / "one.txt").write_text("0123456789")
    (tmp_path / "empty.txt").write_text("  \n")
    train, val = load_corpus([tmp_path / "one.txt"], 0.2, None)
    assert (train, val) == (["01234567"], ["89"])
    with pytest.raises(ValueError, match="empty.txt: the file holds no text"):
        load_corpus([tmp_path / "empty.txt"], 0.1, None)


def test_tokens_are_cached_once(tmp_path, byte_tokenizer, monkeypatch):
    docs = ["first document", "second one"]
    first = tokenize_cached("demo", docs, byte_tokenizer, tmp_path)
    expected = [*byte_tokenizer.encode(docs[0]), 0, *byte_tokenizer.encode(docs[1]), 0]
    assert first.tokens.tolist() == expected and first.tokens.dtype == np.uint16
    assert isinstance(first.tokens, np.memmap)
    assert (first.n_chars, first.n_documents) == (24, 2)
    assert first.n_targets == len(expected) - 1 - 1  # the target after the first EOS is not scored

    def fail(*args, **kwargs):
        raise AssertionError("tokenized again instead of reading the cache")

    monkeypatch.setattr(byte_tokenizer, "encode_batch", fail)
    again = tokenize_cached("demo", docs, byte_tokenizer, tmp_path)
    assert again.path == first.path and again.tokens.tolist() == expected
    with pytest.raises(AssertionError, match="tokenized again"):
        tokenize_cached("demo", [*docs, "changed"], byte_tokenizer, tmp_path)


def test_no_target_crosses_a_document_boundary():
    eos = 0
    stream = np.array([5, 6, 7, eos, 8, 9, eos, 3, 4, eos], dtype=np.uint16)
    dataset = PackedTokenDataset(stream, seq_len=4, eos_id=eos, pad_id=1)
    assert len(dataset) == 3
    items = [dataset[i] for i in range(len(dataset))]
    inputs = torch.cat([it["input_ids"] for it in items])
    targets = torch.cat([it["targets"] for it in items])
    assert inputs.tolist() == [5, 6, 7, 0, 8, 9, 0, 3, 4, 1, 1, 1]
    assert targets.tolist() == [6, 7, 0, IGNORE_INDEX, 9, 0, IGNORE_INDEX, 4, 0, IGNORE_INDEX, IGNORE_INDEX, -100]
    # Every scored position of the stream is scored exactly once.
    scored = (targets != IGNORE_INDEX).sum().item()
    assert scored == len(stream) - 1 - 2
    with pytest.raises(IndexError):
        dataset[3]


def test_random_training_windows_are_masked_too():
    eos = 0
    stream = np.tile(np.array([4, 5, 6, eos], dtype=np.uint16), 50)
    dataset = PackedTokenDataset(stream, seq_len=16, eos_id=eos, pad_id=1, random_windows=True)
    assert len(dataset) == (len(stream) - 1) // 16
    for i in range(20):
        item = dataset[i]
        assert ((item["input_ids"] == eos) == (item["targets"] == IGNORE_INDEX)).all()


def test_epoch_length_of_random_windows_is_configurable(tmp_path, byte_tokenizer):
    stream = np.tile(np.array([4, 5, 6, 0], dtype=np.uint16), 50)
    assert len(PackedTokenDataset(stream, 16, 0, 1, random_windows=True, windows_per_epoch=1000)) == 1000
    with pytest.raises(ValueError, match="windows_per_epoch"):
        PackedTokenDataset(stream, 16, 0, 1, windows_per_epoch=10)  # evaluation windows are a fixed set
    train = tokenize_cached("t", ["some training text " * 20], byte_tokenizer, tmp_path)
    dm = TextDataModule(train, {"val": train}, seq_len=8, batch_size=4, eos_id=0, pad_id=1, train_windows_per_epoch=64)
    assert len(dm.train_dataloader()) == 16


def test_datamodule_batches(tmp_path, byte_tokenizer):
    train = tokenize_cached("t", ["some training text " * 20], byte_tokenizer, tmp_path)
    val = tokenize_cached("v", ["held out"], byte_tokenizer, tmp_path)
    dm = TextDataModule(train, {"val": val, "other": val}, seq_len=8, batch_size=4, eos_id=0, pad_id=1)
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 8) and batch["targets"].dtype == torch.long
    assert len(dm.val_dataloader()) == 2 and dm.eval_names == ["val", "other"]
    small = TextDataModule(val, {"val": val}, seq_len=4, batch_size=8, eos_id=0, pad_id=1)
    with pytest.raises(ValueError, match="fewer than one batch"):
        small.train_dataloader()
