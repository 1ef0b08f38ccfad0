"""DNATokenizer: HyenaDNA ids, case and IUPAC folding, errors naming record and position, reverse complement."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.genomics.tokenizer import DNATokenizer, InvalidSequenceError


def test_vocabulary_matches_hyenadna():
    tok = DNATokenizer()
    assert tok.id_to_token[:7] == ["[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]"]
    assert [tok.vocab[b] for b in "ACGTN"] == [7, 8, 9, 10, 11]
    assert tok.vocab_size == 12 and tok.pad_id == 4


def test_round_trip_case_and_iupac():
    tok = DNATokenizer()
    assert tok.decode(tok.encode("ACGTNACGT")) == "ACGTNACGT"
    assert tok.decode(tok.encode("acgtn")) == "ACGTN"  # soft-masked repeats fold to upper case
    assert tok.decode(tok.encode("RYKMSWBDHVryk")) == "N" * 13
    assert tok.decode([tok.cls_id, 7, tok.pad_id], skip_special=True) == "A"


def test_invalid_character_names_record_and_position():
    with pytest.raises(InvalidSequenceError, match=r"record 'chr9'.*'X' at position 4 "):
        DNATokenizer().encode("ACGXT", record="chr9")
    ids = DNATokenizer(unknown="unk").encode("ACGXT")
    assert ids.tolist() == [7, 8, 9, 6, 10]
    with pytest.raises(ValueError, match="unknown must be"):
        DNATokenizer(unknown="skip")


def test_reverse_complement_on_ids():
    tok = DNATokenizer()
    ids = torch.from_numpy(tok.encode("AACGTN").astype(np.int64))
    assert tok.decode(tok.reverse_complement(ids)) == "NACGTT"
    assert torch.equal(tok.reverse_complement(tok.reverse_complement(ids)), ids)
    # Right-padded batch: each row's real bases are reverse-complemented, padding stays put.
    batch = torch.tensor([[7, 7, 8, tok.pad_id], [9, 10, 7, 8]])
    mask = batch != tok.pad_id
    rc = tok.reverse_complement(batch, mask)
    assert tok.decode(rc[0]) == "GTT[PAD]" and tok.decode(rc[1]) == "GTAC"
