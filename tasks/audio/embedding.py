"""Embedding of mu-law tokens, with an optional learned strided front-end that turns samples into frames.

A Mamba layer over every sample of 8 kHz speech (8,000 steps a second) is affordable on a GPU but slow on a CPU,
and a spoken digit's identity lives at the scale of milliseconds, not single samples. So the front-end embeds each
token and, when `strides` is non-empty, downsamples with causal strided 1-D convolutions (kernel `2 * stride`),
like the pooling stages of SaShiMi. `frame = prod(strides)` samples make one backbone step.

Every convolution is left-padded, so frame `j` depends only on samples `< (j + 1) * frame`: the same front-end serves
autoregressive pretraining (frame `j` predicts the samples of frame `j + 1`) and classification.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import nn

from backbone.init import init_embedding_


class CausalStridedConv1d(nn.Conv1d):
    """`[B, C_in, T]` -> `[B, C_out, T // stride]`; output `j` sees inputs `< (j + 1) * stride` only."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=2 * stride, stride=stride)
        self.left_pad = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left_pad, 0)))


class AudioFrontEnd(nn.Module):
    """Mu-law tokens `[B, T]` (int64 in [0, levels)) -> frame features `[B, T // frame, d_model]`.

    Args:
        d_model: width of the backbone's residual stream.
        levels: number of mu-law levels (256 for 8-bit).
        embed_dim: width of the per-sample embedding when `strides` is non-empty (else the embedding is `d_model`).
        strides: the stride of each convolution; `()` gives one backbone step per sample.
    """

    def __init__(self, d_model: int, levels: int = 256, embed_dim: int = 32, strides: tuple[int, ...] = (4, 4)):
        super().__init__()
        if any(int(s) < 1 for s in strides):
            raise ValueError(f"front-end strides must be positive, got {list(strides)}")
        self.levels = levels
        self.strides = tuple(int(s) for s in strides)
        self.frame = math.prod(self.strides)
        self.embedding = nn.Embedding(levels, embed_dim if self.strides else d_model)
        init_embedding_(self.embedding)
        self._init_amplitude_channels()
        widths = [self.embedding.embedding_dim] + [d_model] * len(self.strides)
        self.convs = nn.ModuleList(
            CausalStridedConv1d(c_in, c_out, s) for c_in, c_out, s in zip(widths[:-1], widths[1:], self.strides)
        )

    @torch.no_grad()
    def _init_amplitude_channels(self) -> None:
        """Start channel 0 at each token's decoded amplitude and channel 1 at its companded value in [-1, 1].

        Tokens are ordinal, but a normal(0.02) embedding hides that: the convolutions would first have to learn
        which tokens are loud. With the amplitude in the embedding from step 0 the first convolution acts as a
        filterbank over the real waveform, and classification loss falls about twice as fast early on (measured
        on FSDD). The other channels keep the usual random init.
        """
        ids = torch.arange(self.levels)
        weight = self.embedding.weight
        weight[:, 0] = AF.mu_law_decoding(ids, self.levels).to(weight.dtype)
        if weight.shape[1] > 1:
            weight[:, 1] = ids.to(weight.dtype) / ((self.levels - 1) / 2) - 1

    @property
    def receptive_field(self) -> int:
        """Samples (whole frames) that the last frame depends on: the window `AudioLM.generate` re-encodes."""
        # n outputs of a conv with stride s read n * s + s inputs; walk from the last frame down to the samples.
        span = 1
        for stride in reversed(self.strides):
            span = span * stride + stride
        return -(-span // self.frame) * self.frame

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(f"front-end expects int64 tokens [B, T], got {tuple(tokens.shape)} {tokens.dtype}")
        if tokens.shape[1] % self.frame:
            raise ValueError(f"sequence length {tokens.shape[1]} is not a multiple of the frame ({self.frame} samples)")
        x = self.embedding(tokens)  # [B, T, E]
        if not self.convs:
            return x
        x = x.transpose(1, 2)  # [B, E, T]
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = F.gelu(x)
        return x.transpose(1, 2)  # [B, T // frame, D]
