"""Audio I/O: soundfile reading, mono mixing, resampling, normalization, mu-law round trips, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from tasks.audio.io import AudioFileError, load_waveform, normalize, read_audio, resample, to_mono, write_wav
from tasks.audio.tokenizer import MuLawTokenizer


@pytest.fixture
def fsdd_wav(data_dir):
    return data_dir / "audio" / "fsdd" / "recordings" / "0_george_0.wav"


def test_reads_fsdd_recording_as_float(fsdd_wav):
    wave, rate = read_audio(fsdd_wav)
    assert rate == 8000 and wave.shape == (1, 2384) and wave.dtype == torch.float32
    assert 0 < wave.abs().max() <= 1


def test_stereo_to_mono_and_resample(tmp_path):
    t = np.arange(16000) / 16000
    left, right = np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t) * 0.5
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], 1).astype(np.float32) * 0.5, 16000, subtype="PCM_16")
    wave = load_waveform(path, 8000, "none")
    assert wave.shape == (8000,)
    expected = torch.from_numpy(0.375 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)).float()
    assert torch.allclose(wave[100:-100], expected[100:-100], atol=2e-3)
    assert to_mono(torch.ones(2, 5)).shape == (5,)
    assert resample(torch.ones(3, 80), 8000, 8000).shape == (3, 80)


def test_normalizations():
    x = torch.tensor([[0.0, 0.25, -0.5]])
    assert torch.allclose(normalize(x, "peak"), torch.tensor([[0.0, 0.5, -1.0]]))
    assert torch.allclose(normalize(x, "minmax"), torch.tensor([[1 / 3, 1.0, -1.0]]))
    assert torch.equal(normalize(torch.zeros(1, 4), "peak"), torch.zeros(1, 4))  # silence is not divided by zero
    with pytest.raises(ValueError, match="normalization"):
        normalize(x, "rms")


def test_mu_law_round_trip(fsdd_wav):
    tok = MuLawTokenizer()
    wave = load_waveform(fsdd_wav, 8000)
    ids = tok.encode(wave)
    assert ids.dtype == torch.int64 and ids.min() >= 0 and ids.max() <= 255
    assert (tok.decode(ids) - wave).abs().max() < 0.07  # one mu-law step near full scale
    assert torch.equal(tok.encode(tok.decode(torch.arange(256))), torch.arange(256))
    assert tok.silence_id == 128
    with pytest.raises(ValueError, match="token ids"):
        tok.decode(torch.tensor([256]))


def test_write_then_read(tmp_path):
    wave = torch.linspace(-0.9, 0.9, 400)
    path = write_wav(tmp_path / "x.wav", wave, 8000)
    back, rate = read_audio(path)
    assert rate == 8000 and torch.allclose(back[0], wave, atol=1e-4)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "empty"),
        (b"RIFF\x00\x00\x00\x00WAVEjunkjunk", "cannot decode"),
        (b"%PDF-1.4 not audio" * 20, "cannot decode"),
    ],
)
def test_bad_files_name_the_file(tmp_path, content, match):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioFileError, match=match) as err:
        read_audio(path)
    assert str(path) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(AudioFileError, match="no such file"):
        load_waveform(tmp_path / "nope.wav", 8000)
