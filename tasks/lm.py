"""`MambaLM`: token embedding + Mamba backbone + (tied) LM head, shared by text, DNA and audio token models."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

import kernels
from backbone import MambaBackbone, MambaCache, MambaConfig
from backbone.checkpoints import load_checked, parse_config, read_config, read_weights, to_our_keys
from backbone.init import init_embedding_
from tasks.heads import LMHead
from tasks.lm_loss import linear_token_nll


@dataclass
class MambaLMConfig:
    """A Mamba language model over `vocab_size` tokens; the embedding is padded to `pad_vocab_size_multiple`."""

    backbone: MambaConfig = field(default_factory=MambaConfig)
    vocab_size: int = 50277
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True

    @property
    def padded_vocab_size(self) -> int:
        multiple = max(1, self.pad_vocab_size_multiple)
        return -(-self.vocab_size // multiple) * multiple


class MambaLM(nn.Module):
    """Causal LM: `input_ids` `[B, L]` int64 -> logits `[B, L, padded_vocab_size]`.

    Example:
        >>> lm = MambaLM(MambaLMConfig(MambaConfig(d_model=64, n_layer=2), vocab_size=100))
        >>> logits = lm(torch.randint(0, 100, (2, 16)))     # [2, 16, 104]
        >>> cache = lm.allocate_cache(batch=2)
        >>> _ = lm(torch.randint(0, 100, (2, 5)), cache)    # prefill
        >>> next_logits = lm.step(torch.tensor([3, 7]), cache)  # [2, 104], O(1) per token
    """

    def __init__(self, config: MambaLMConfig) -> None:
        super().__init__()
        self.config = config
        d_model = config.backbone.d_model
        self.embedding = nn.Embedding(config.padded_vocab_size, d_model)
        init_embedding_(self.embedding)
        self.backbone = MambaBackbone(config.backbone)
        self.lm_head = LMHead(d_model, config.padded_vocab_size, self.embedding if config.tie_embeddings else None)

    def allocate_cache(self, batch: int, dtype: torch.dtype | None = None) -> MambaCache:
        return self.backbone.allocate_cache(batch, dtype=dtype)

    def hidden_states(self, input_ids: torch.Tensor, cache: MambaCache | None = None) -> torch.Tensor:
        """`[B, L]` -> final-norm hidden states `[B, L, D]`."""
        return self.backbone(self.embedding(input_ids), cache)

    def forward(self, input_ids: torch.Tensor, cache: MambaCache | None = None) -> torch.Tensor:
        return self.lm_head(self.hidden_states(input_ids, cache))

    def token_nll(
        self, input_ids: torch.Tensor, targets: torch.Tensor, *, ignore_index: int = -100
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`[B, L]` ids and next-token targets -> (summed NLL fp32, count of scored targets), with the LM head fused
        into the cross-entropy so the `[B, L, V]` logits are never stored (`tasks/lm_loss.py`)."""
        return linear_token_nll(self.hidden_states(input_ids), self.lm_head.weight, targets, ignore_index=ignore_index)

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, cache: MambaCache) -> torch.Tensor:
        """One token per sequence: `[B]` -> logits `[B, padded_vocab_size]`, advancing `cache`.

        The LM head goes through `kernels.decode_linear` like the layers' projections: a few rows against a
        `[V, D]` matrix is their shape too (on CPU it is `F.linear`)."""
        hidden = self.backbone.step(self.embedding(input_ids), cache)  # [B, D]
        return kernels.decode_linear(hidden, self.lm_head.weight)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write `config.json` and `model.safetensors` (a tied LM head is stored once, as the embedding)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "model_type": "mambalab",
            "vocab_size": self.config.vocab_size,
            "pad_vocab_size_multiple": self.config.pad_vocab_size_multiple,
            "tie_embeddings": self.config.tie_embeddings,
            "backbone": asdict(self.config.backbone),
        }
        (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        if self.config.tie_embeddings:
            state.pop("lm_head.proj.weight")
        save_file(state, str(directory / "model.safetensors"))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: torch.device | str = "cpu") -> MambaLM:
        """Load ours, a state-spaces (mamba-ssm) or a Hugging Face `MambaForCausalLM` directory."""
        directory = Path(directory)
        layout, parsed = parse_config(read_config(directory))
        model = cls(MambaLMConfig(parsed.backbone, parsed.vocab_size, parsed.pad_vocab_size_multiple,
                                  parsed.tie_embeddings))  # fmt: skip
        weights = to_our_keys(read_weights(directory), layout)
        if parsed.tie_embeddings:
            weights.pop("lm_head.proj.weight", None)
        load_checked(model, weights, source=f"{directory} ({layout} layout)")
        return model.to(device)
