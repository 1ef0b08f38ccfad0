"""Linear layers for a few rows at a time (decoding), optionally after a fused residual add + RMSNorm: `ref.py`
(PyTorch spec) and `gemv.py` (Triton)."""
