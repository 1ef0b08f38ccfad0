"""Softmax cross-entropy with its gradient in one pass over the logits: `ref.py` (PyTorch spec), `fused.py` (Triton)."""
