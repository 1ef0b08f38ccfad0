"""DNA sequence classifier: a (pretrained) Mamba LM body + pooled classification head, optionally bidirectional
and reverse-complement invariant. The LM head itself is `MambaLM.lm_head` (`tasks.heads.LMHead` over the DNA
vocabulary); the generic pieces live in `tasks/heads.py`."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from tasks.genomics.rc import RCConjoined
from tasks.heads import BidirectionalBackbone, ClassificationHead, Pooling
from tasks.lm import MambaLM

Direction = Literal["causal", "bidirectional"]


class DNAClassifier(nn.Module):
    """`input_ids [B, L]` int64 (+ `mask [B, L]` bool, True on real bases) -> logits `[B, num_classes]`.

    Args:
        lm: the body; its `embedding` and `backbone` are reused (shared, not copied), its LM head is dropped.
        direction: `causal` runs the backbone left to right; `bidirectional` adds a right-to-left pass
            (`tasks.heads.BidirectionalBackbone`, weights shared so a pretrained backbone serves both ways).
        rc_invariant: average the logits of each sequence and of its reverse complement (`RCConjoined`).
    """

    def __init__(self, lm: MambaLM, num_classes: int, *, pooling: Pooling = "mean", direction: Direction = "causal",
                 rc_invariant: bool = False, dropout: float = 0.0):  # fmt: skip
        super().__init__()
        if direction not in ("causal", "bidirectional"):
            raise ValueError(f"direction must be 'causal' or 'bidirectional', got {direction!r}")
        self.embedding = lm.embedding
        self.backbone = lm.backbone
        self.bidirectional = None
        if direction == "bidirectional":
            self.bidirectional = BidirectionalBackbone(lm.backbone, combine="add", share_weights=True)
        self.head = ClassificationHead(lm.config.backbone.d_model, num_classes, pooling=pooling, dropout=dropout)
        self._rc = RCConjoined(self._logits) if rc_invariant else None

    def _logits(self, input_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.embedding(input_ids)  # [B, L, D]
        hidden = self.bidirectional(hidden, mask) if self.bidirectional is not None else self.backbone(hidden)
        return self.head(hidden, mask)

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._rc(input_ids, mask) if self._rc is not None else self._logits(input_ids, mask)
