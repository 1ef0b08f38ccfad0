"""Byte-level BPE tokenizers for text, on top of the Hugging Face `tokenizers` library.

Two ways to get one:

* `TextTokenizer.train_bpe(texts, vocab_size=...)` learns a byte-level BPE on a corpus (GPT-2 / GPT-NeoX style:
  text is UTF-8 bytes mapped to 256 printable symbols, so any string round-trips and nothing is ever `<unk>`).
  `vocab_size = 256 + len(special_tokens)` gives a pure byte tokenizer (no merges).
* `TextTokenizer.from_file("tokenizer.json")` loads an existing one, e.g. GPT-NeoX-20B's, the tokenizer of the
  public Mamba checkpoints (`<|endoftext|>` = 0, `<|padding|>` = 1, 50,277 ids).

`save(path)` writes the same `tokenizer.json` format, so a tokenizer trained here loads anywhere `tokenizers` does.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

# GPT-NeoX-20B's special tokens, at the same ids (0 and 1), so our tokenizers and the public ones agree on EOS/pad.
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"
DEFAULT_SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)
_BYTE_ALPHABET = 256


class TextTokenizer:
    """A `tokenizers.Tokenizer` plus the ids the language tasks need (EOS, padding).

    Args:
        tokenizer: the underlying Hugging Face tokenizer.
        eos_token: the end-of-document token; must be in the vocabulary.
        pad_token: the padding token, or None (then padding uses the EOS id and is masked by length, never by id).
    """

    def __init__(self, tokenizer: Tokenizer, eos_token: str = EOS_TOKEN, pad_token: str | None = PAD_TOKEN):
        eos_id = tokenizer.token_to_id(eos_token)
        if eos_id is None:
            raise ValueError(f"the tokenizer has no end-of-document token {eos_token!r}")
        pad_id = tokenizer.token_to_id(pad_token) if pad_token is not None else None
        self.tokenizer = tokenizer
        self.eos_token = eos_token
        self.eos_id: int = eos_id
        self.pad_id: int = eos_id if pad_id is None else pad_id

    @classmethod
    def train_bpe(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
        min_frequency: int = 2,
        show_progress: bool = False,
    ) -> TextTokenizer:
        """Learn a byte-level BPE on `texts` (an iterable of strings, e.g. lines or documents).

        Special tokens take the first ids in the given order; the 256 byte symbols follow, then the merges, until
        the vocabulary holds `vocab_size` entries (fewer when the corpus runs out of pairs seen `min_frequency` times).
        """
        special_tokens = list(special_tokens)
        if EOS_TOKEN not in special_tokens:
            raise ValueError(
                f"special_tokens must include the end-of-document token {EOS_TOKEN!r}, got {special_tokens}"
            )
        smallest = _BYTE_ALPHABET + len(special_tokens)
        if vocab_size < smallest:
            raise ValueError(
                f"vocab_size={vocab_size} is below 256 byte symbols + {len(special_tokens)} special tokens = {smallest}"
            )
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=special_tokens,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=show_progress,
        )
        tokenizer.train_from_iterator(texts, trainer=trainer)
        pad = PAD_TOKEN if PAD_TOKEN in special_tokens else None
        return cls(tokenizer, eos_token=EOS_TOKEN, pad_token=pad)

    @classmethod
    def from_file(cls, path: str | os.PathLike, eos_token: str = EOS_TOKEN, pad_token: str | None = PAD_TOKEN):
        """Load a `tokenizer.json` (Hugging Face `tokenizers` format)."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer file at {path} (expected a Hugging Face tokenizer.json)")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as err:  # the Rust side raises a bare Exception on malformed JSON
            raise ValueError(f"{path}: not a valid tokenizer.json ({err})") from err
        if pad_token is not None and tokenizer.token_to_id(pad_token) is None:
            pad_token = None
        try:
            return cls(tokenizer, eos_token=eos_token, pad_token=pad_token)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err

    def save(self, path: str | os.PathLike) -> Path:
        """Write `tokenizer.json` (a directory gets `<dir>/tokenizer.json`); returns the file written."""
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path = path / "tokenizer.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(path))
        return path

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (the model's embedding needs at least this many rows)."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def fingerprint(self) -> str:
        """A short content hash: token caches are keyed by it, so a changed tokenizer never reuses stale tokens."""
        return hashlib.sha256(self.tokenizer.to_str().encode()).hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens added."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` over many strings (in parallel threads on the Rust side)."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`; ids that end inside a multi-byte character decode to U+FFFD until completed."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"TextTokenizer(vocab_size={self.vocab_size}, eos_id={self.eos_id}, pad_id={self.pad_id})"
