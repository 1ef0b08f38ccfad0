"""Depthwise causal conv1d: `ref.py` (PyTorch spec), `conv.py` (Triton), `step.py` (decoding)."""
