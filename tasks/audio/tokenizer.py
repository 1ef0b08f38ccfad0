"""8-bit mu-law quantization of waveforms (256 tokens, mu = 255), as in WaveNet and SaShiMi.

Mu-law companding spends more of the 256 levels near zero, where speech spends most of its time, so 8 bits of
mu-law sound about as good as 12-13 bits of linear PCM. Both directions are `torchaudio.functional`'s.
"""

from __future__ import annotations

import torch
import torchaudio.functional as AF


class MuLawTokenizer:
    """Waveform <-> mu-law token ids.

    `encode` maps float samples in [-1, 1] (any shape `[..., T]`) to int64 ids in [0, levels); `decode` maps ids back
    to float samples. `decode(encode(x))` equals `x` up to the quantization step (at most ~0.06 near full scale,
    ~2e-4 near zero) and `encode(decode(ids)) == ids` exactly.
    """

    def __init__(self, bits: int = 8):
        if not 1 <= bits <= 16:
            raise ValueError(f"mu-law bits must be in 1..16, got {bits}")
        self.bits = bits
        self.levels = 1 << bits
        self.mu = self.levels - 1

    @property
    def silence_id(self) -> int:
        """The token of a zero sample (used to pad clips with silence)."""
        return int(self.encode(torch.zeros(1))[0])

    def encode(self, waveform: torch.Tensor) -> torch.Tensor:
        """float `[..., T]` in [-1, 1] -> int64 `[..., T]` in [0, levels). Values outside [-1, 1] are clipped."""
        if not waveform.is_floating_point():
            raise TypeError(f"mu-law encoding needs a float waveform, got {waveform.dtype}")
        return AF.mu_law_encoding(waveform.clamp(-1.0, 1.0), self.levels)

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """int `[..., T]` in [0, levels) -> float32 `[..., T]` in [-1, 1]."""
        if ids.is_floating_point():
            raise TypeError(f"mu-law decoding needs integer token ids, got {ids.dtype}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.levels):
            raise ValueError(f"token ids must lie in [0, {self.levels}), got [{int(ids.min())}, {int(ids.max())}]")
        return AF.mu_law_decoding(ids, self.levels).float()
