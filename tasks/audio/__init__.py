"""Audio front-end: WAV files -> mono float waveforms -> 8-bit mu-law tokens -> Mamba -> next-sample or class logits.

from tasks.audio import AudioClassifier, AudioDataConfig, AudioDataModule, MuLawTokenizer, load_waveform
"""

from tasks.audio.data import AudioDataConfig, AudioDataModule, AudioRecord, BadFiles, ManifestError
from tasks.audio.embedding import AudioFrontEnd
from tasks.audio.io import AudioFileError, load_waveform, read_audio, write_wav
from tasks.audio.model import AudioClassifier, AudioLM, AudioModelConfig
from tasks.audio.tokenizer import MuLawTokenizer
from tasks.audio.transforms import AugmentConfig

__all__ = [
    "AudioClassifier",
    "AudioDataConfig",
    "AudioDataModule",
    "AudioFileError",
    "AudioFrontEnd",
    "AudioLM",
    "AudioModelConfig",
    "AudioRecord",
    "AugmentConfig",
    "BadFiles",
    "ManifestError",
    "MuLawTokenizer",
    "load_waveform",
    "read_audio",
    "write_wav",
]
