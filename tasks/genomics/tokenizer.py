"""Character tokenizer for DNA, with the HyenaDNA / Caduceus vocabulary.

Ids 0-6 are the special tokens `[CLS] [SEP] [BOS] [MASK] [PAD] [RESERVED] [UNK]`, ids 7-11 the bases `A C G T N`
(the order HyenaDNA's `CharacterTokenizer` uses, so ids match checkpoints trained with it). Encoding goes through a
256-entry lookup table on the raw bytes, so a whole chromosome encodes in one vectorised step:

* lower case (soft-masked repeats, as in UCSC hg38) maps to upper case;
* IUPAC ambiguity codes `R Y K M S W B D H V` (and `U`-less DNA only) map to `N`;
* anything else raises `InvalidSequenceError` naming the record and the 1-based position, or becomes `[UNK]` when
  the tokenizer is built with `unknown="unk"`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]")
BASES = ("A", "C", "G", "T", "N")
IUPAC_AMBIGUITY = "RYKMSWBDHV"
_COMPLEMENT = {"A": "T", "C": "G", "G": "C", "T": "A", "N": "N"}


class InvalidSequenceError(ValueError):
    """A sequence holds a character that is neither a base, an IUPAC code, nor allowed as `[UNK]`."""


class DNATokenizer:
    """Maps DNA text to token ids and back.

    Args:
        unknown: what to do with a character outside `ACGTN`, their lower case and the IUPAC codes:
            `"error"` (default) raises `InvalidSequenceError`, `"unk"` maps it to `[UNK]`.
    """

    def __init__(self, unknown: Literal["error", "unk"] = "error"):
        if unknown not in ("error", "unk"):
            raise ValueError(f"unknown must be 'error' or 'unk', got {unknown!r}")
        self.unknown = unknown
        self.vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + BASES)}
        self.id_to_token = list(self.vocab)
        for name in ("cls", "sep", "bos", "mask", "pad", "unk"):
            setattr(self, f"{name}_id", self.vocab[f"[{name.upper()}]"])
        self.base_ids = tuple(self.vocab[b] for b in "ACGT")
        self.n_id = self.vocab["N"]
        # Byte -> id table; -1 marks bytes that are not DNA.
        table = np.full(256, -1, dtype=np.int16)
        for base in BASES:
            table[ord(base)] = table[ord(base.lower())] = self.vocab[base]
        for code in IUPAC_AMBIGUITY:
            table[ord(code)] = table[ord(code.lower())] = self.n_id
        self._table = table
        complement = np.arange(len(self.vocab), dtype=np.int64)
        for base, comp in _COMPLEMENT.items():
            complement[self.vocab[base]] = self.vocab[comp]
        self._complement = torch.from_numpy(complement)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, sequence: str | bytes, *, record: str | None = None, offset: int = 0) -> np.ndarray:
        """Encode DNA text to ids.

        Args:
            sequence: the bases (no header, no newlines).
            record: the record name used in error messages.
            offset: position of `sequence[0]` inside the record, so errors give the record position.

        Returns:
            `[len(sequence)]` uint8 ids.
        """
        raw = sequence if isinstance(sequence, bytes) else sequence.encode("ascii", errors="replace")
        ids = self._table[np.frombuffer(raw, dtype=np.uint8)]
        bad = np.flatnonzero(ids < 0)
        if bad.size:
            if self.unknown == "unk":
                ids[bad] = self.unk_id
            else:
                pos = int(bad[0])
                char = chr(raw[pos]) if isinstance(sequence, bytes) else sequence[pos]
                where = f"record {record!r}" if record is not None else "sequence"
                raise InvalidSequenceError(
                    f"{where}: invalid character {char!r} at position {offset + pos + 1} (1-based); "
                    f"{bad.size} invalid character(s) in total. Allowed: A C G T N, lower case, IUPAC codes "
                    f"{' '.join(IUPAC_AMBIGUITY)}; build DNATokenizer(unknown='unk') to map others to [UNK]"
                )
        return ids.astype(np.uint8)

    def decode(self, ids: torch.Tensor | np.ndarray | list[int], *, skip_special: bool = False) -> str:
        """Turn `[L]` ids back into text; special tokens come out as `[PAD]` etc. unless `skip_special`."""
        if isinstance(ids, (torch.Tensor, np.ndarray)):
            ids = ids.tolist()
        n_special = len(SPECIAL_TOKENS)
        tokens = []
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the DNA vocabulary (size {self.vocab_size})")
            if skip_special and i < n_special:
                continue
            tokens.append(self.id_to_token[i])
        return "".join(tokens)

    def reverse_complement(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Reverse complement on token ids.

        Args:
            ids: `[..., L]` integer ids.
            mask: optional `[..., L]` bool, True on real tokens, which must come first (right padding). Each row's
                real tokens are reversed in place and the padding stays at the end.

        Returns:
            `[..., L]` ids of the same dtype; special tokens are their own complement.
        """
        comp = self._complement.to(ids.device)[ids.long()].to(ids.dtype)
        if mask is None:
            return comp.flip(-1)
        length = mask.sum(-1, keepdim=True)
        pos = torch.arange(ids.shape[-1], device=ids.device).expand_as(ids)
        index = torch.where(pos < length, length - 1 - pos, pos)
        return comp.gather(-1, index)
