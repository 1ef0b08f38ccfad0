"""One decoding step of a Mamba mixer's middle (conv step, x_proj, dt_proj, SSM step): `ref.py` (PyTorch spec, the
unfused ops) and `fused.py` (two Triton kernels instead of four launches)."""
