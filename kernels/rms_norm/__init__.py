"""Fused residual add + RMSNorm / LayerNorm: `ref.py` (PyTorch spec), `fused.py` (Triton)."""
