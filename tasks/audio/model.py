"""Audio models on mu-law tokens: an encoder (front-end + Mamba backbone), a frame-level LM and a classifier.

* `AudioEncoder`: tokens `[B, T]` -> hidden `[B, T // frame, D]` (causal).
* `AudioLM`: the encoder plus a `FrameDecoder` with an LM head over the 256 mu-law levels. Hidden frame `j` and the
  previous sample give a categorical over 256 levels for each sample of frame `j + 1`. With `strides=()`
  (`frame = 1`) this is the exact sample-level autoregressive model.
* `AudioClassifier`: the encoder's front-end and backbone (optionally run in both directions) and a pooled head.

`AudioLM.save_pretrained` writes `config.json` + `model.safetensors`; `AudioClassifier.from_pretrained_encoder` starts
a classifier from that directory, which is how pretraining transfers to fine-tuning.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from backbone import MambaBackbone, MambaConfig
from tasks.audio.embedding import AudioFrontEnd
from tasks.heads import BidirectionalBackbone, ClassificationHead, LMHead, Pooling


@dataclass
class AudioModelConfig:
    """Shape of the audio encoder: the backbone plus the front-end that feeds it."""

    backbone: MambaConfig
    levels: int = 256
    embed_dim: int = 32
    strides: list[int] = field(default_factory=lambda: [4, 4])

    @property
    def frame(self) -> int:
        return math.prod(self.strides)


class AudioEncoder(nn.Module):
    """Mu-law tokens `[B, T]` -> causal hidden states `[B, T // frame, D]`."""

    def __init__(self, config: AudioModelConfig) -> None:
        super().__init__()
        self.config = config
        self.front_end = AudioFrontEnd(config.backbone.d_model, config.levels, config.embed_dim, tuple(config.strides))
        self.backbone = MambaBackbone(config.backbone)

    def forward(self, tokens: torch.Tensor, cache=None) -> torch.Tensor:
        return self.backbone(self.front_end(tokens), cache)


class FrameDecoder(nn.Module):
    """Per-sample logits of the next frame from the backbone's frame state and the previous sample.

    Logits of sample `t` of frame `j + 1` = `head(MLP(W h_j + E[x_prev] + P[t]))`, where `x_prev` is the sample just
    before it (teacher-forced in training, just sampled in generation). Without `x_prev` a frame model would have to
    predict up to `frame` samples ahead blind; with it, the sample-to-sample correlation of audio is modeled locally
    and the backbone carries the longer context (MegaByte's local model, cut to one step of memory).

    Shapes: hidden `[B, F, D]`, previous int64 `[B, F, frame]` -> logits `[B, F, frame, levels]`.
    """

    def __init__(self, d_model: int, frame: int, levels: int) -> None:
        super().__init__()
        self.context = nn.Linear(d_model, d_model)
        self.previous = nn.Embedding(levels, d_model)
        self.position = nn.Parameter(torch.zeros(frame, d_model))
        self.mlp = nn.Sequential(nn.GELU(), nn.Linear(d_model, d_model), nn.GELU())
        self.head = LMHead(d_model, levels)

    def forward(self, hidden: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        x = self.context(hidden)[:, :, None] + self.previous(previous) + self.position  # [B, F, frame, D]
        return self.head(self.mlp(x))

    def step(self, context: torch.Tensor, previous: torch.Tensor, t: int) -> torch.Tensor:
        """One sample: projected context `[B, D]` (`self.context(h)`), previous ids `[B]` -> logits `[B, levels]`."""
        return self.head(self.mlp(context + self.previous(previous) + self.position[t]))


class AudioLM(nn.Module):
    """Frame-level autoregressive model of mu-law waveforms: encoder + `FrameDecoder`."""

    def __init__(self, config: AudioModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = AudioEncoder(config)
        self.decoder = FrameDecoder(config.backbone.d_model, config.frame, config.levels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens `[B, T]` -> logits `[B, T // frame - 1, frame, levels]` for the samples of frames 1, 2, ...

        Row `j` depends on frames `<= j` (through the backbone) and on the sample before each target.
        """
        frame = self.config.frame
        hidden = self.encoder(tokens)[:, :-1]  # [B, F - 1, D]
        previous = tokens[:, frame - 1 : -1].reshape(*hidden.shape[:2], frame)  # [B, F - 1, frame]
        return self.decoder(hidden, previous)

    def loss(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean negative log-likelihood in nats per predicted sample, and the number of samples it averages.

        Args:
            tokens: int64 `[B, T]`, `T` a multiple of the frame.
            mask: bool `[B, T]`, True on real samples (padding is neither input nor target when False).

        The first frame of each sequence is context only (nothing precedes it to predict it from).
        """
        frame = self.config.frame
        logits = self(tokens)  # [B, F - 1, frame, levels]
        targets = tokens[:, frame:]  # [B, (F - 1) * frame]
        nll = F.cross_entropy(logits.flatten(0, 2).float(), targets.flatten(), reduction="none")
        if mask is None:
            return nll.mean(), torch.tensor(nll.numel(), device=nll.device)
        weight = mask[:, frame:].reshape(-1).to(nll.dtype)
        count = weight.sum()
        return (nll * weight).sum() / count.clamp_min(1), count

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, num_samples: int, temperature: float = 1.0) -> torch.Tensor:
        """Continue `prompt` (int64 `[B, T0]`, `T0` a positive multiple of the frame) by `num_samples` tokens.

        The backbone runs O(1) per frame on its recurrent cache and the front-end re-reads only its receptive field;
        within a frame, samples are drawn one by one from the `FrameDecoder`. Returns int64 `[B, T0 + num_samples]`
        (`num_samples` rounded up to whole frames). `temperature <= 0` is greedy.
        """
        frame = self.config.frame
        if prompt.dim() != 2 or prompt.shape[1] < frame or prompt.shape[1] % frame:
            raise ValueError(
                f"prompt must be [B, T0] with T0 a positive multiple of {frame}, got {tuple(prompt.shape)}"
            )
        backbone = self.encoder.backbone
        cache = backbone.allocate_cache(prompt.shape[0], device=prompt.device)
        hidden = backbone(self.encoder.front_end(prompt), cache)[:, -1]  # prefill: [B, D]
        tokens, window = [prompt], self.encoder.front_end.receptive_field
        previous = prompt[:, -1]
        for _ in range(-(-num_samples // frame)):
            context, new = self.decoder.context(hidden), []
            for t in range(frame):
                logits = self.decoder.step(context, previous, t).float()  # [B, levels]
                if temperature <= 0:
                    previous = logits.argmax(-1)
                else:
                    previous = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1)[:, 0]
                new.append(previous)
            tokens.append(torch.stack(new, dim=1))
            recent = torch.cat(tokens, dim=1)[:, -window:]
            hidden = backbone.step(self.encoder.front_end(recent)[:, -1], cache)
        return torch.cat(tokens, dim=1)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write `config.json` and `model.safetensors` to `directory`."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"model_type": "mambalab-audio", **asdict(self.config)}
        (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"))
        return directory

    @staticmethod
    def read_pretrained(directory: str | Path) -> tuple[AudioModelConfig, dict[str, torch.Tensor]]:
        """Read a directory written by `save_pretrained`: its config and its weights (keys as in `AudioLM`)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        config_path, weights_path = directory / "config.json", directory / "model.safetensors"
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: expected a directory written by AudioLM.save_pretrained")
        raw = json.loads(config_path.read_text())
        if raw.pop("model_type", None) != "mambalab-audio":
            raise ValueError(f"{config_path}: not an audio model checkpoint (model_type != 'mambalab-audio')")
        config = AudioModelConfig(backbone=MambaConfig(**raw.pop("backbone")), **raw)
        return config, load_file(str(weights_path))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> AudioLM:
        config, weights = cls.read_pretrained(directory)
        model = cls(config)
        model.load_state_dict(weights)
        return model


class AudioClassifier(nn.Module):
    """Mu-law tokens `[B, T]` -> class logits `[B, num_classes]`.

    Args:
        config: the encoder's shape (must match a pretrained encoder's to load it).
        num_classes: number of labels.
        pooling: `"mean"` over frames or the `"last"` frame (the one that has heard the whole clip when causal).
        bidirectional: `None` (causal), `"add"` or `"concat"`: also run a copy of the backbone over the reversed
            frames (see `tasks.heads.BidirectionalBackbone`).
        dropout: dropout before the classification layer.
    """

    def __init__(
        self,
        config: AudioModelConfig,
        num_classes: int,
        pooling: Pooling = "mean",
        bidirectional: str | None = "add",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.config = config
        encoder = AudioEncoder(config)
        self.front_end = encoder.front_end
        self.backbone = encoder.backbone
        self.bidirectional = bidirectional
        self.sequence_model: nn.Module = self.backbone
        out_dim = config.backbone.d_model
        if bidirectional:
            self.sequence_model = BidirectionalBackbone(self.backbone, combine=bidirectional)
            out_dim = self.sequence_model.out_dim
        self.head = ClassificationHead(out_dim, num_classes, pooling=pooling, dropout=dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.sequence_model(self.front_end(tokens)))

    def load_encoder(self, weights: dict[str, torch.Tensor], source: str) -> None:
        """Copy pretrained `encoder.*` weights (from `AudioLM.read_pretrained`) into the front-end and backbone(s)."""
        encoder = {k.removeprefix("encoder."): v for k, v in weights.items() if k.startswith("encoder.")}
        if not encoder:
            raise ValueError(f"{source}: holds no encoder.* weights")
        targets = [self.backbone]
        if isinstance(self.sequence_model, BidirectionalBackbone):
            targets = [self.sequence_model.forward_backbone, self.sequence_model.reverse_backbone]
        self.front_end.load_state_dict({k.removeprefix("front_end."): v for k, v in encoder.items()
                                        if k.startswith("front_end.")})  # fmt: skip
        backbone = {k.removeprefix("backbone."): v for k, v in encoder.items() if k.startswith("backbone.")}
        for target in dict.fromkeys(targets):
            target.load_state_dict(backbone)

    @classmethod
    def from_pretrained_encoder(cls, directory: str | Path, num_classes: int, **kwargs) -> AudioClassifier:
        """A classifier whose front-end and backbone(s) start from an `AudioLM.save_pretrained` directory."""
        config, weights = AudioLM.read_pretrained(directory)
        model = cls(config, num_classes, **kwargs)
        model.load_encoder(weights, source=str(directory))
        return model
