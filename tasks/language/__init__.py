"""Language: byte-level BPE tokenizers, packed text datasets, LM metrics and generation around `MambaLM`."""

from tasks.lm import MambaLM, MambaLMConfig

__all__ = ["MambaLM", "MambaLMConfig"]
