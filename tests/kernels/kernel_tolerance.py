"""The one tolerance rule for kernel tests (mamba-ssm's): a fast path's error against an fp32 reference is at most
twice the error of the reference run at the fast path's (low) precision, plus a small absolute slack.

`reference_lowp` is the reference on the same low-precision inputs; `reference_fp32` is the reference on those input
values upcast to fp32, so input rounding counts for neither side. For fp32 inputs both are the same tensor and only
the slack remains: `atol` plus `rtol` times the largest reference value, where `rtol` defaults to one unit in the last
place of the output's dtype (at least 1e-4): on tiny tensors a single element rounded the other way is a full unit.
"""

from __future__ import annotations

import torch


def assert_close(
    name: str,
    fast: torch.Tensor | None,
    reference_lowp: torch.Tensor | None,
    reference_fp32: torch.Tensor | None,
    *,
    atol: float = 1e-5,
    rtol: float | None = None,
) -> None:
    if reference_fp32 is None:
        assert fast is None, f"{name}: expected None, got a tensor"
        return
    assert fast is not None, f"{name}: missing"
    assert fast.shape == reference_fp32.shape, f"{name}: shape {tuple(fast.shape)} != {tuple(reference_fp32.shape)}"
    assert fast.dtype == reference_lowp.dtype, f"{name}: dtype {fast.dtype} != {reference_lowp.dtype}"
    if rtol is None:
        rtol = max(torch.finfo(reference_lowp.dtype).eps, 1e-4)
    fast, lowp, hi = (t.detach().double().cpu() for t in (fast, reference_lowp, reference_fp32))
    assert not torch.isnan(fast).any(), f"{name}: NaN in the fast path's output (unwritten or invalid)"
    err = (fast - hi).abs().max().item() if fast.numel() else 0.0
    ref_err = (lowp - hi).abs().max().item() if fast.numel() else 0.0
    scale = hi.abs().max().item() if fast.numel() else 0.0
    bound = 2 * ref_err + atol + rtol * scale
    assert err <= bound, (
        f"{name}: max error {err:.3e} > bound {bound:.3e} (reference error {ref_err:.3e}, scale {scale:.3e})"
    )
