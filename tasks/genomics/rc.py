"""Reverse-complement symmetry for DNA classifiers.

DNA is double-stranded: a sequence and its reverse complement (RC) carry the same information, so a classifier
should give both the same answer. `RCConjoined` makes any classifier RC-invariant by post-hoc conjoining
(Caduceus, Schiff et al. 2024, section 3.3): it runs the model on the sequence and on its reverse complement and
averages the logits. The result is invariant by construction, `f(x) = f(rc(x))`, for any weights, during training
and at inference; the price is two forward passes.
"""

from __future__ import annotations

import torch
from torch import nn

from tasks.genomics.tokenizer import DNATokenizer


class RCConjoined(nn.Module):
    """`model(input_ids [B, L], mask [B, L] | None) -> [B, C]` made reverse-complement invariant.

    Masks must be right-padded (True on real bases); each sequence is reverse-complemented over its real bases
    only, so padding stays at the end and length-dependent pooling sees the same lengths on both strands.
    """

    def __init__(self, model: nn.Module, tokenizer: DNATokenizer | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer or DNATokenizer()

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        rc_ids = self.tokenizer.reverse_complement(input_ids, mask)
        # One batched pass over both strands: half the kernel launches of two calls.
        both = self.model(torch.cat([input_ids, rc_ids]), None if mask is None else torch.cat([mask, mask]))
        forward_logits, rc_logits = both.chunk(2)
        return (forward_logits + rc_logits) / 2
