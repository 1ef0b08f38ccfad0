"""Modality front-ends (tokenizers, embeddings, heads, data) around the shared Mamba backbone."""
