"""Text corpora for language modeling: read, split, tokenize once into a memory-mapped cache, pack into windows.

The token stream of a corpus is its documents, each followed by the end-of-document token::

    doc_1 EOS doc_2 EOS ... doc_n EOS

Training windows are slices of that stream (packing: no padding is wasted). Document boundaries are respected in the
loss: a target whose input is EOS (the first token of the next document) is masked with `IGNORE_INDEX`, so the model
is never trained to predict one document from another. Within a window the recurrent state does flow across an EOS
(the Mamba-1 kernels have no per-document state reset); the model sees EOS as a boundary marker, as a packed GPT does
without document attention masks.

Train/validation split: per file, the first `1 - val_fraction` of the characters train and the rest validate
(nanoGPT's tinyshakespeare convention, so bits per character compare with its published numbers).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from tasks.data_sources import NamedDataset, cache_root
from tasks.distributed import eval_shards
from tasks.language.tokenizer import TextTokenizer

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
_CACHE_VERSION = 1


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _verify_sha256(expected: str):
    def verify(path: Path) -> None:
        actual = _sha256_file(path)
        if actual != expected:
            raise ValueError(f"{path}: sha256 {actual} does not match the published {expected}")

    return verify


TINYSHAKESPEARE = NamedDataset(
    name="tinyshakespeare",
    filename="tinyshakespeare.txt",
    url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    description="tinyshakespeare, 1.1 MB of Shakespeare plays (karpathy/char-rnn)",
    verify=_verify_sha256("86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),
)
WIKITEXT2_VALID = NamedDataset(
    name="wikitext2_valid",
    filename="wikitext-2/valid.txt",
    url="https://raw.githubusercontent.com/pytorch/examples/main/word_language_model/data/wikitext-2/valid.txt",
    description="WikiText-2 (v1, tokenized) validation split",
    verify=_verify_sha256("f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8"),
)
NAMED_TEXT = {d.name: d for d in (TINYSHAKESPEARE, WIKITEXT2_VALID)}
GPT_NEOX_20B_TOKENIZER = NamedDataset(
    name="gpt-neox-20b",
    filename="gpt-neox-20b/tokenizer.json",
    url="https://raw.githubusercontent.com/BlinkDL/RWKV-LM/524481d5099b38d9bc8ef1e89209161b86c8011b/RWKV-v4/20B_tokenizer.json",
    description="GPT-NeoX-20B's byte-level BPE (50,277 ids), the tokenizer of the public Mamba checkpoints",
    verify=_verify_sha256("56ac4821e129d2c520fdaba60abd920fa852ada51b45c0dd52bbb6bd8c985ade"),
)
NAMED_TOKENIZERS = {GPT_NEOX_20B_TOKENIZER.name: GPT_NEOX_20B_TOKENIZER}  # `tokenizer.path` may name one of these


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file as one string; a decoding error names the file, line and byte offset."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte offset {err.start}: {err.reason})") from None


def split_documents(text: str, separator: str | None) -> list[str]:
    """Split `text` on the regular expression `separator` (None: the whole text is one document); drops empties."""
    if not separator:
        return [text] if text else []
    return [doc for doc in re.split(separator, text) if doc.strip()]


def train_val_split(text: str, val_fraction: float) -> tuple[str, str]:
    """First `1 - val_fraction` of the characters and the rest (nanoGPT's split: `int(n * 0.9)` for 0.1)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    cut = int(len(text) * (1.0 - val_fraction))
    return text[:cut], text[cut:]


@dataclass(frozen=True)
class TokenizedText:
    """A tokenized split held in a memory-mapped `.npy` file.

    Attributes:
        name: a label for logs and metric names (`val`, `wikitext2`).
        tokens: the stream `doc_1 EOS ... doc_n EOS`, `[n_tokens]` uint16 or uint32 (memory-mapped, read-only).
        n_chars: characters of the text (not counting EOS), the denominator of bits per character.
        n_documents: documents in the stream.
        n_targets: positions that are scored when the whole stream is evaluated (targets whose input is not EOS).
        path: the cache file.
    """

    name: str
    tokens: np.ndarray
    n_chars: int
    n_documents: int
    n_targets: int
    path: Path

    @property
    def tokens_per_char(self) -> float:
        return self.n_targets / max(1, self.n_chars)


def tokenize_cached(
    name: str,
    documents: Sequence[str],
    tokenizer: TextTokenizer,
    cache_dir: str | os.PathLike | None = None,
) -> TokenizedText:
    """Tokenize `documents` into `<cache_dir>/<name>-<key>.npy` once; later calls memory-map the file.

    The key hashes the text and the tokenizer, so editing either re-tokenizes and nothing stale is read.
    `cache_dir` defaults to `$MAMBALAB_CACHE/tokens`.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_root() / "tokens"
    digest = hashlib.sha256(f"v{_CACHE_VERSION}:{tokenizer.fingerprint}:{len(documents)}".encode())
    for doc in documents:
        digest.update(hashlib.sha256(doc.encode()).digest())
    stem = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-{digest.hexdigest()[:16]}"
    token_path, meta_path = cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"
    if not (token_path.is_file() and meta_path.is_file()):
        cache_dir.mkdir(parents=True, exist_ok=True)
        dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
        ids = tokenizer.encode_batch(documents)
        eos = np.array([tokenizer.eos_id], dtype=dtype)
        stream = np.concatenate([part for doc_ids in ids for part in (np.asarray(doc_ids, dtype=dtype), eos)])
        eos_inputs = int((stream[:-1] == tokenizer.eos_id).sum())
        meta = {
            "name": name,
            "n_chars": sum(map(len, documents)),
            "n_documents": len(documents),
            "n_targets": max(0, len(stream) - 1 - eos_inputs),
            "tokenizer": tokenizer.fingerprint,
        }
        # Write to temporary names and rename, so an interrupted run never leaves a truncated cache behind.
        tmp_tokens = token_path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp_tokens, stream)
        os.replace(tmp_tokens, token_path)
        tmp_meta = meta_path.with_suffix(f".{os.getpid()}.tmp")
        tmp_meta.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp_meta, meta_path)
        log.info("tokenized %s: %d documents, %d chars -> %d tokens (%s)", name, len(documents), meta["n_chars"],
                 len(stream), token_path)  # fmt: skip
    meta = json.loads(meta_path.read_text())
    tokens = np.load(token_path, mmap_mode="r")
    return TokenizedText(name, tokens, meta["n_chars"], meta["n_documents"], meta["n_targets"], token_path)


class PackedTokenDataset(Dataset):
    """Fixed-length windows over a token stream, with cross-document targets masked.

    Each item is `{"input_ids": [seq_len] int64, "targets": [seq_len] int64}` with `targets[j] = stream[s + j + 1]`,
    or `IGNORE_INDEX` where `input_ids[j]` is EOS (the next document starts) or past the end of the stream.

    Args:
        tokens: the `doc EOS doc EOS ...` stream (`TokenizedText.tokens`).
        seq_len: window length L.
        eos_id: the end-of-document id.
        pad_id: the id put in input positions past the end of the stream (their targets are masked).
        random_windows: training mode: each item is a window at a uniformly random start (drawn from torch's RNG,
            so `seed_everything` makes it reproducible), and an epoch is `(n_tokens - 1) // seq_len` items unless
            `windows_per_epoch` says otherwise (an epoch of random windows is only a bookkeeping unit: a small corpus
            gives epochs of a few steps, and each epoch end costs a loader restart and, under DDP, a sync).
            Otherwise evaluation mode: consecutive non-overlapping windows that score every target exactly once,
            the last one padded.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        seq_len: int,
        eos_id: int,
        pad_id: int,
        random_windows: bool = False,
        windows_per_epoch: int | None = None,
    ):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if len(tokens) < 2:
            raise ValueError(f"a token stream needs at least 2 tokens to give a target, got {len(tokens)}")
        if random_windows and len(tokens) < seq_len + 1:
            raise ValueError(f"the training stream has {len(tokens)} tokens, fewer than seq_len + 1 = {seq_len + 1}")
        self.tokens, self.seq_len, self.eos_id, self.pad_id = tokens, seq_len, eos_id, pad_id
        self.random_windows = random_windows
        if windows_per_epoch is not None and (not random_windows or windows_per_epoch < 1):
            raise ValueError(f"windows_per_epoch must be >= 1 and needs random_windows, got {windows_per_epoch}")
        self.windows_per_epoch = windows_per_epoch

    def __len__(self) -> int:
        n_targets = len(self.tokens) - 1
        if self.random_windows:
            return self.windows_per_epoch or n_targets // self.seq_len
        return -(-n_targets // self.seq_len)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.random_windows:
            start = int(torch.randint(0, len(self.tokens) - self.seq_len, ()))
        elif 0 <= index < len(self):
            start = index * self.seq_len
        else:
            raise IndexError(f"window {index} out of range for {len(self)} windows")
        chunk = torch.from_numpy(self.tokens[start : start + self.seq_len + 1].astype(np.int64))
        inputs = torch.full((self.seq_len,), self.pad_id, dtype=torch.long)
        targets = torch.full((self.seq_len,), IGNORE_INDEX, dtype=torch.long)
        n = len(chunk) - 1
        inputs[:n], targets[:n] = chunk[:-1], chunk[1:]
        targets[:n][chunk[:-1] == self.eos_id] = IGNORE_INDEX
        return {"input_ids": inputs, "targets": targets}


def load_corpus(
    files: Sequence[str | os.PathLike], val_fraction: float, document_separator: str | None
) -> tuple[list[str], list[str]]:
    """Read text files, split each into train/validation characters, then into documents.

    Returns `(train_documents, val_documents)`.
    """
    if not files:
        raise ValueError("no text files given")
    train_docs: list[str] = []
    val_docs: list[str] = []
    for file in files:
        text = read_text(file)
        if not text.strip():
            raise ValueError(f"{file}: the file holds no text")
        train, val = train_val_split(text, val_fraction)
        train_docs += split_documents(train, document_separator)
        val_docs += split_documents(val, document_separator)
    return train_docs, val_docs


class TextDataModule(pl.LightningDataModule):
    """Training windows from one tokenized split, evaluation windows over one or more others.

    Args:
        train: the training stream.
        evals: evaluation streams by name, in order (the first is the main validation set; Lightning gives each its
            own `dataloader_idx`).
        seq_len, batch_size: window length and training batch size; evaluation uses `eval_batch_size`.
        eos_id, pad_id: from the tokenizer.
        num_workers: DataLoader workers (windows are cheap memory-mapped slices; 0 is usually enough).
        train_windows_per_epoch: random training windows per epoch (default: the split's tokens / seq_len).
    """

    def __init__(
        self,
        train: TokenizedText,
        evals: dict[str, TokenizedText],
        *,
        seq_len: int,
        batch_size: int,
        eos_id: int,
        pad_id: int,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        train_windows_per_epoch: int | None = None,
    ) -> None:
        super().__init__()
        self.train, self.evals = train, dict(evals)
        self.seq_len, self.batch_size = seq_len, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.eos_id, self.pad_id, self.num_workers = eos_id, pad_id, num_workers
        self.train_windows_per_epoch = train_windows_per_epoch

    @property
    def eval_names(self) -> list[str]:
        return list(self.evals)

    def _loader(self, dataset: Dataset, batch_size: int, drop_last: bool, sampler=None) -> DataLoader:
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=False, drop_last=drop_last, num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(), persistent_workers=self.num_workers > 0, sampler=sampler,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        dataset = PackedTokenDataset(
            self.train.tokens, self.seq_len, self.eos_id, self.pad_id, random_windows=True,
            windows_per_epoch=self.train_windows_per_epoch,
        )  # fmt: skip
        if len(dataset) < self.batch_size:
            raise ValueError(
                f"the training split ({len(self.train.tokens)} tokens) gives {len(dataset)} windows of "
                f"{self.seq_len} tokens, fewer than one batch of {self.batch_size}: lower data.seq_len or batch_size"
            )
        return self._loader(dataset, self.batch_size, drop_last=True)

    def val_dataloader(self) -> list[DataLoader]:
        # Training windows are random draws (Lightning's DistributedSampler only splits their count between ranks;
        # `PerRankSeed` makes the draws differ); evaluation windows are each scored once over all ranks.
        loaders = []
        for t in self.evals.values():
            windows = PackedTokenDataset(t.tokens, self.seq_len, self.eos_id, self.pad_id)
            dataset, sampler = eval_shards(windows, self.trainer, _score_nothing)
            loaders.append(self._loader(dataset, self.eval_batch_size, drop_last=False, sampler=sampler))
        return loaders


def _score_nothing(item: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"input_ids": item["input_ids"], "targets": torch.full_like(item["targets"], IGNORE_INDEX)}
