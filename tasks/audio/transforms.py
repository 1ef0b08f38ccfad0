"""Fixed-length cropping/padding and waveform augmentation (random time shift, gain, additive noise).

All functions take and return float `[samples]` waveforms in [-1, 1] and draw randomness from torch's generator,
so DataLoader workers (seeded by Lightning's `seed_everything(workers=True)`) stay reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AugmentConfig:
    """Training-time augmentation.

    Attributes:
        gain_db: random gain drawn uniformly from [-gain_db, +gain_db] dB (after peak normalization, so a positive
            gain clips the loudest samples a little, as a hot recording would).
        noise_prob: probability of adding white noise to a clip.
        snr_db_min, snr_db_max: its signal-to-noise ratio, drawn uniformly in dB.
    """

    gain_db: float = 6.0
    noise_prob: float = 0.5
    snr_db_min: float = 10.0
    snr_db_max: float = 40.0


def place(waveform: torch.Tensor, length: int, align: str = "center") -> tuple[torch.Tensor, torch.Tensor]:
    """Crop or pad (with silence) `[samples]` to `[length]`; also return the bool mask of recorded samples.

    `align`: "start" keeps the beginning, "center" centres the clip, "random" picks a random crop (long clips) or a
    random offset inside the window (short clips), the random time shift of training.
    """
    if align not in ("start", "center", "random"):
        raise ValueError(f"align must be 'start', 'center' or 'random', got {align!r}")
    n = waveform.shape[-1]
    out = waveform.new_zeros(length)
    mask = torch.zeros(length, dtype=torch.bool)
    slack = abs(length - n)
    if align == "start":
        offset = 0
    elif align == "center":
        offset = slack // 2
    else:
        offset = int(torch.randint(0, slack + 1, ()))
    if n >= length:
        out.copy_(waveform[offset : offset + length])
        mask[:] = True
    else:
        out[offset : offset + n] = waveform
        mask[offset : offset + n] = True
    return out, mask


def augment(waveform: torch.Tensor, config: AugmentConfig) -> torch.Tensor:
    """Random gain, then (with probability `noise_prob`) white noise at a random SNR; clipped to [-1, 1]."""
    if config.gain_db > 0:
        gain_db = (torch.rand(()) * 2 - 1) * config.gain_db
        waveform = waveform * 10 ** (gain_db / 20)
    if config.noise_prob > 0 and torch.rand(()) < config.noise_prob:
        snr_db = config.snr_db_min + torch.rand(()) * (config.snr_db_max - config.snr_db_min)
        power = waveform.pow(2).mean().clamp_min(1e-10)
        waveform = waveform + torch.randn_like(waveform) * torch.sqrt(power / 10 ** (snr_db / 10))
    return waveform.clamp(-1.0, 1.0)
