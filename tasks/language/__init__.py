"""Language modeling: byte-level BPE tokenizers, packed text datasets, LM metrics, and recurrent generation."""

from tasks.language.data import TextDataModule, TokenizedText, tokenize_cached
from tasks.language.generation import GenerationResult, SamplingConfig, generate
from tasks.language.metrics import LanguageModelMetrics, bits_per_char
from tasks.language.tokenizer import TextTokenizer
from tasks.lm import MambaLM, MambaLMConfig

__all__ = [
    "GenerationResult",
    "LanguageModelMetrics",
    "MambaLM",
    "MambaLMConfig",
    "SamplingConfig",
    "TextDataModule",
    "TextTokenizer",
    "TokenizedText",
    "bits_per_char",
    "generate",
    "tokenize_cached",
]
