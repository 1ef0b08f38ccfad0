"""Reading, writing and conditioning audio: files to float waveforms at one sample rate.

Files are read and written with `soundfile` (libsndfile: WAV, FLAC, OGG, AIFF, ...); torchaudio is used only for
transforms (`torchaudio.functional.resample`), because its file I/O needs FFmpeg through torchcodec.

Waveforms are `float32` tensors shaped `[channels, samples]` straight from a file and `[samples]` once mixed to mono.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

Normalization = Literal["peak", "minmax", "none"]


class AudioFileError(ValueError):
    """An audio file cannot be used (missing, empty, corrupt or an unsupported format); the message names it."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def read_audio(path: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """Read an audio file into a float waveform.

    Returns:
        `(waveform, sample_rate)` with `waveform` float32 `[channels, samples]`; integer PCM is scaled to [-1, 1).

    Raises:
        AudioFileError: the file is missing, has no samples, is corrupt or is not a format libsndfile reads.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioFileError(path, "no such file")
    if path.stat().st_size == 0:
        raise AudioFileError(path, "the file is empty (0 bytes)")
    try:
        data, sample_rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        # libsndfile says "Format not recognised" both for a foreign format and for a WAV with a broken header.
        raise AudioFileError(
            path, f"cannot decode audio ({err}); supported formats: {', '.join(sorted(sf.available_formats()))}"
        ) from err
    if data.shape[0] == 0:
        raise AudioFileError(path, "the file holds no audio samples")
    if not np.isfinite(data).all():
        raise AudioFileError(path, "the file holds NaN or infinite samples")
    return torch.from_numpy(np.ascontiguousarray(data.T)), int(sample_rate)


def write_wav(path: str | os.PathLike, waveform: torch.Tensor, sample_rate: int) -> Path:
    """Write a float waveform (`[samples]` or `[channels, samples]`, values in [-1, 1]) as 16-bit PCM WAV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = waveform.detach().to("cpu", torch.float32).clamp(-1.0, 1.0)
    data = data.T if data.dim() == 2 else data
    sf.write(path, data.numpy(), sample_rate, subtype="PCM_16")
    return path


def to_mono(waveform: torch.Tensor) -> torch.Tensor:
    """Average channels: `[channels, samples]` (or `[samples]`) -> `[samples]`."""
    return waveform.mean(dim=0) if waveform.dim() == 2 else waveform


def resample(waveform: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited (sinc) resampling along the last dimension with `torchaudio.functional.resample`."""
    if orig_rate == new_rate:
        return waveform
    return AF.resample(waveform, orig_rate, new_rate)


def normalize(waveform: torch.Tensor, mode: Normalization = "peak", eps: float = 1e-8) -> torch.Tensor:
    """Scale each recording (last dimension) to the full [-1, 1] range before mu-law quantization.

    SaShiMi scales every clip to span the full range so that the 256 mu-law levels are used whatever the recording
    level. `"minmax"` is SaShiMi's exact transform (`2 * (x - min) / (max - min) - 1`, which also removes a DC
    offset); `"peak"` divides by the peak magnitude and keeps silence at 0, which is the better choice when clips
    are padded with silence. Silent clips are left unchanged rather than divided by zero.
    """
    if mode == "none":
        return waveform
    if mode == "peak":
        peak = waveform.abs().amax(dim=-1, keepdim=True)
        return waveform / peak.clamp_min(eps)
    if mode == "minmax":
        lo = waveform.amin(dim=-1, keepdim=True)
        hi = waveform.amax(dim=-1, keepdim=True)
        return 2.0 * (waveform - lo) / (hi - lo).clamp_min(eps) - 1.0
    raise ValueError(f"normalization must be one of 'peak', 'minmax', 'none', got {mode!r}")


def load_waveform(path: str | os.PathLike, sample_rate: int, normalization: Normalization = "peak") -> torch.Tensor:
    """Read a file and condition it for the models: mono, resampled to `sample_rate`, normalized.

    Returns:
        float32 `[samples]` with values in [-1, 1].
    """
    waveform, file_rate = read_audio(path)
    waveform = resample(to_mono(waveform), file_rate, sample_rate)
    if waveform.numel() == 0:
        raise AudioFileError(path, f"no samples left after resampling {file_rate} Hz -> {sample_rate} Hz")
    return normalize(waveform, normalization).clamp(-1.0, 1.0)
