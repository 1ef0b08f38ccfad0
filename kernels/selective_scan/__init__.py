"""Selective scan: `ref.py` (PyTorch spec), `scan.py` (Triton fused scan), `step.py` (decoding)."""
