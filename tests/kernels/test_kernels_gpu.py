"""Triton kernels on a GPU at model sizes (dim 1536, seqlen 2048 to 65536, dstate 16 and 64), against the
references. Run on the device machine: `python -m pytest -m gpu tests/kernels -q`."""

from __future__ import annotations

import pytest
import torch
from kernel_tolerance import assert_close
from layouts import channel_last_copy, is_channel_last, projection_views

from kernels.causal_conv1d import conv
from kernels.causal_conv1d import ref as conv_ref
from kernels.rms_norm import fused
from kernels.rms_norm import ref as norm_ref
from kernels.selective_scan import ref as scan_ref
from kernels.selective_scan import scan

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setenv("MAMBALAB_KERNELS_POISON", "1")


def scan_inputs(batch, dim, seqlen, dstate, dtype, groups=None):
    cuda = dict(device="cuda")
    bc = (batch, dstate, seqlen) if groups is None else (batch, groups, dstate, seqlen)
    return dict(
        u=torch.randn(batch, dim, seqlen, **cuda).to(dtype),
        delta=(0.5 * torch.randn(batch, dim, seqlen, **cuda) - 2).to(dtype),
        A=-(0.5 + torch.rand(dim, dstate, **cuda)) * torch.arange(1, dstate + 1, **cuda),
        B=torch.randn(bc, **cuda).to(dtype),
        C=torch.randn(bc, **cuda).to(dtype),
        D=torch.randn(dim, **cuda),
        z=torch.randn(batch, dim, seqlen, **cuda).to(dtype),
        delta_bias=0.5 * torch.randn(dim, **cuda),
        initial_state=torch.randn(batch, dim, dstate, **cuda),
    )


def run_scan(fn, inputs, dout, dlast, upcast):
    # detach, not clone: a channel-last view keeps its strides.
    leaves = {k: (v.float() if upcast else v).detach().requires_grad_() for k, v in inputs.items()}
    out, last = fn(**leaves, delta_softplus=True, return_last_state=True)
    grads = torch.autograd.grad((out.float() * dout.float()).sum() + (last * dlast).sum(), list(leaves.values()))
    return [out, last, *grads]


@pytest.mark.parametrize(
    "shape,dtype,groups",
    [
        ((2, 1536, 2048, 16), torch.bfloat16, None),
        ((1, 1536, 2048, 64), torch.float32, None),
        ((1, 1536, 2048, 16), torch.bfloat16, 4),
        ((1, 1536, 16384, 16), torch.bfloat16, None),
        ((2, 96, 300, 16), torch.float32, 32),
        ((2, 64, 77, 4), torch.float32, None),
    ],
    ids=["2048-d16-bf16", "2048-d64-fp32", "2048-grouped", "16384-d16-bf16", "3-channels-per-group", "dstate4"],
)
def test_scan_fwd_bwd(shape, dtype, groups):
    inputs = scan_inputs(*shape, dtype, groups)
    dout = torch.randn_like(inputs["u"])
    dlast = torch.randn_like(inputs["initial_state"])
    fast = run_scan(scan.selective_scan, inputs, dout, dlast, upcast=False)
    lowp = run_scan(scan_ref.selective_scan, inputs, dout, dlast, upcast=False)
    hi = run_scan(scan_ref.selective_scan, inputs, dout, dlast, upcast=True)
    for name, f, lo, h in zip(["out", "last", *(f"d{k}" for k in inputs)], fast, lowp, hi):
        assert_close(name, f, lo, h, rtol=max(torch.finfo(lo.dtype).eps, 1e-3))


@pytest.mark.parametrize(
    "shape,dtype,groups",
    [
        ((2, 1536, 2048, 16), torch.bfloat16, None),
        ((1, 1536, 2048, 16), torch.bfloat16, 4),
        ((2, 64, 77, 4), torch.float32, None),
    ],
    ids=["2048-d16-bf16", "2048-grouped", "dstate4"],
)
def test_scan_fwd_bwd_channel_last(shape, dtype, groups):
    # The mixer's memory: u/z halves of one in_proj output [b, l, 2d], delta a transposed [b, l, d], B/C slices of
    # one x_proj output [b, l, dt_rank + 2 g n]; out and the sequences' gradients come back channel-last.
    batch, _, seqlen, _ = shape
    inputs = scan_inputs(*shape, dtype, groups)
    views = dict(inputs, delta=channel_last_copy(inputs["delta"]))
    views["u"], views["z"] = projection_views(inputs["u"], inputs["z"])
    dt = inputs["B"].new_zeros(batch, 96, seqlen)
    _, views["B"], views["C"] = projection_views(dt, inputs["B"], inputs["C"])
    dout = torch.randn_like(inputs["u"])
    dlast = torch.randn_like(inputs["initial_state"])
    fast = run_scan(scan.selective_scan, views, channel_last_copy(dout), dlast, upcast=False)
    lowp = run_scan(scan_ref.selective_scan, inputs, dout, dlast, upcast=False)
    hi = run_scan(scan_ref.selective_scan, inputs, dout, dlast, upcast=True)
    names = ["out", "last", *(f"d{k}" for k in inputs)]
    for name, f, lo, h in zip(names, fast, lowp, hi):
        assert_close(name, f, lo, h, rtol=max(torch.finfo(lo.dtype).eps, 1e-3))
    for name, f in zip(names, fast):
        if name in ("out", "du", "ddelta", "dz", "dB", "dC"):
            assert is_channel_last(f), f"{name} strides {f.stride()}"


@pytest.mark.parametrize(
    "shape,dtype,groups,seg_lens",
    [
        ((2, 64, 1000, 4), torch.float32, None, (64, 32)),
        ((1, 96, 3001, 16), torch.bfloat16, 32, (128, 256)),
    ],
    ids=["fp32-seg64/32", "bf16-3-channels-per-group-seg128/256"],
)
def test_scan_forced_segments(monkeypatch, shape, dtype, groups, seg_lens):
    # Many short segments on the GPU's compiled kernels: pass 1's ordered in-thread folds (time in thread), the
    # masked-sum fallback (3 channels per group: one-channel blocks, time across lanes), and the carries.
    monkeypatch.setitem(scan.SEGMENT_LEN, "fwd", seg_lens[0])
    monkeypatch.setitem(scan.SEGMENT_LEN, "bwd", seg_lens[1])
    inputs = scan_inputs(*shape, dtype, groups)
    dout = torch.randn_like(inputs["u"])
    dlast = torch.randn_like(inputs["initial_state"])
    fast = run_scan(scan.selective_scan, inputs, dout, dlast, upcast=False)
    lowp = run_scan(scan_ref.selective_scan, inputs, dout, dlast, upcast=False)
    hi = run_scan(scan_ref.selective_scan, inputs, dout, dlast, upcast=True)
    for name, f, lo, h in zip(["out", "last", *(f"d{k}" for k in inputs)], fast, lowp, hi):
        assert_close(name, f, lo, h, rtol=max(torch.finfo(lo.dtype).eps, 1e-3))


def test_scan_long_sequence_segmented():
    # (1, 1536, 65536, 16) bf16 fwd+bwd, the long-sequence anchor shape, on the automatic (segmented) path. The
    # reference cannot hold all channels' (seqlen, dstate) tensors, so: every per-channel result of the full run is
    # compared on the first 128 channels (channels are independent given B/C), and a second run on those 128 channels
    # alone (segmented too) is compared in full, dB/dC included.
    shape, channels = (1, 1536, 65536, 16), 128
    for dim in (shape[1], channels):
        for kind in ("fwd", "bwd"):
            plan = scan._direction_plan(kind, 16, 1, dim, shape[2], 1, torch.device("cuda"))[1:]
            assert plan[2] > 1, f"{kind} at dim {dim} should be segmented, got {plan}"
    inputs = scan_inputs(*shape, torch.bfloat16)
    dout = torch.randn_like(inputs["u"])
    dlast = torch.randn_like(inputs["initial_state"])
    full = run_scan(scan.selective_scan, inputs, dout, dlast, upcast=False)
    per_channel = {"u", "delta", "z", "initial_state"}
    sub = {k: v[:, :channels] if k in per_channel else v[:channels] if k in ("A", "D", "delta_bias") else v
           for k, v in inputs.items()}  # fmt: skip
    dout, dlast = dout[:, :channels], dlast[:, :channels]
    fast = run_scan(scan.selective_scan, sub, dout, dlast, upcast=False)
    lowp = run_scan(scan_ref.selective_scan, sub, dout, dlast, upcast=False)
    hi = run_scan(scan_ref.selective_scan, sub, dout, dlast, upcast=True)
    names = ["out", "last", *(f"d{k}" for k in inputs)]
    for name, f, lo, h in zip(names, fast, lowp, hi):
        assert_close(name, f, lo, h, rtol=max(torch.finfo(lo.dtype).eps, 1e-3))
    for name, f, lo, h in zip(names, full, lowp, hi):
        if name in ("dB", "dC"):  # sums over all 1536 channels: covered by the 128-channel run above
            continue
        sliced = f[:, :channels] if name[1:] in per_channel or name in ("out", "last") else f[:channels]
        assert_close(f"{name} (full run)", sliced, lo, h, rtol=max(torch.finfo(lo.dtype).eps, 1e-3))


@pytest.mark.parametrize("dstate", [16, 64])
def test_scan_forward_long(dstate):
    # seqlen 16384 with dstate 64: compare a slice of channels (channels are independent given B/C).
    inputs = scan_inputs(1, 1536, 16384, dstate, torch.bfloat16)
    with torch.no_grad():
        out, last = scan.selective_scan(**inputs, delta_softplus=True, return_last_state=True)
        sub = {
            k: (
                v[:, :192]
                if k in ("u", "delta", "z", "initial_state")
                else v[:192]
                if k in ("A", "D", "delta_bias")
                else v
            )
            for k, v in inputs.items()
        }
        lowp = scan_ref.selective_scan(**sub, delta_softplus=True, return_last_state=True)
        hi = scan_ref.selective_scan(
            **{k: v.float() for k, v in sub.items()}, delta_softplus=True, return_last_state=True
        )
    assert_close("out", out[:, :192], lowp[0], hi[0], rtol=1e-2)
    assert_close("last", last[:, :192], lowp[1], hi[1], rtol=1e-3)
    assert not torch.isnan(out).any() and not torch.isnan(last).any()


@pytest.mark.parametrize("channel_last", [False, True], ids=["time-major", "channel-last"])
@pytest.mark.parametrize(
    "shape,width", [((2, 1536, 2048), 4), ((2, 1536, 2048), 2), ((1, 1536, 16384), 4), ((2, 1536, 2048), 7)]
)
def test_conv_fwd_bwd(shape, width, channel_last):
    batch, dim, seqlen = shape
    tensors = dict(
        x=torch.randn(shape, device="cuda", dtype=torch.bfloat16),
        weight=torch.randn(dim, width, device="cuda") / width,
        bias=torch.randn(dim, device="cuda"),
        initial_state=torch.randn(batch, dim, width - 1, device="cuda", dtype=torch.bfloat16),
    )
    dout, dfinal = torch.randn_like(tensors["x"]), torch.randn_like(tensors["initial_state"])

    def run(fn, tensors, dout, upcast):
        leaves = {k: (v.float() if upcast else v).detach().requires_grad_() for k, v in tensors.items()}
        out, final = fn(**leaves, activation="silu", return_final_state=True)
        loss = (out.float() * dout.float()).sum() + (final.float() * dfinal.float()).sum()
        return [out, final, *torch.autograd.grad(loss, list(leaves.values()))]

    if channel_last:  # x is the first half of an in_proj output [b, l, 2d], transposed
        x_view, _ = projection_views(tensors["x"], torch.randn_like(tensors["x"]))
        fast = run(conv.causal_conv1d, dict(tensors, x=x_view), channel_last_copy(dout), False)
        assert is_channel_last(fast[0]) and is_channel_last(fast[2]), "out and dx should be channel-last"
    else:
        fast = run(conv.causal_conv1d, tensors, dout, False)
    lowp, hi = run(conv_ref.causal_conv1d, tensors, dout, False), run(conv_ref.causal_conv1d, tensors, dout, True)
    for i, (f, lo, h) in enumerate(zip(fast, lowp, hi)):
        assert_close(f"tensor {i}", f, lo, h, rtol=max(torch.finfo(lo.dtype).eps, 1e-3))


@pytest.mark.parametrize("norm", ["rms_norm", "layer_norm"])
def test_add_norm_fwd_bwd(norm):
    x = torch.randn(4, 2048, 1536, device="cuda", dtype=torch.bfloat16)
    res = torch.randn_like(x, dtype=torch.float32)
    w, b = 1 + 0.1 * torch.randn(1536, device="cuda"), torch.randn(1536, device="cuda")
    dout, dres = torch.randn_like(x), torch.randn_like(res)

    def run(mod, upcast):
        leaves = [(t.float() if upcast else t).clone().requires_grad_() for t in (x, w, b, res)]
        out, r = getattr(mod, norm)(*leaves, eps=1e-5, prenorm=True, residual_in_fp32=True)
        return [out, r, *torch.autograd.grad((out.float() * dout.float()).sum() + (r * dres).sum(), leaves)]

    for i, (f, lo, h) in enumerate(zip(run(fused, False), run(norm_ref, False), run(norm_ref, True))):
        assert_close(f"tensor {i}", f, lo, h, rtol=max(torch.finfo(lo.dtype).eps, 1e-3))


@pytest.mark.parametrize("channel_last", [False, True], ids=["time-major", "channel-last"])
def test_torch_compile_inductor_fullgraph(channel_last):
    # Inductor checks each custom op's real output strides against its fake function's.
    batch, dim, seqlen, dstate = 2, 256, 512, 16
    x = torch.randn(batch, seqlen, dim, device="cuda", requires_grad=True)
    conv_w = torch.randn(dim, 4, device="cuda", requires_grad=True)
    A = -torch.rand(dim, dstate, device="cuda", requires_grad=True)
    delta, z = torch.randn(batch, dim, seqlen, device="cuda"), torch.randn(batch, dim, seqlen, device="cuda")
    B, C = torch.randn(batch, dstate, seqlen, device="cuda"), torch.randn(batch, dstate, seqlen, device="cuda")
    if channel_last:
        delta, z = channel_last_copy(delta), projection_views(z, torch.randn_like(z))[0]
        _, B, C = projection_views(B.new_zeros(batch, 16, seqlen), B, C)
    norm_w = torch.ones(dim, device="cuda", requires_grad=True)

    def block(x, conv_w, norm_w, A):
        h, r = fused.rms_norm(x, norm_w, None, None, eps=1e-5, prenorm=True, residual_in_fp32=True)
        h = h.transpose(1, 2)  # [b, d, l] view of [b, l, d] memory
        u = conv.causal_conv1d(h if channel_last else h.contiguous(), conv_w, None, activation="silu")
        y = scan.selective_scan(u, delta, A, B, C, None, z, None, delta_softplus=True)
        return (y.float() ** 2).mean() + (r**2).mean()

    params = (x, conv_w, norm_w, A)
    eager = block(*params)
    eager_grads = torch.autograd.grad(eager, params)
    compiled = torch.compile(block, fullgraph=True)(*params)
    compiled_grads = torch.autograd.grad(compiled, params)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_cross_entropy_grad_at_lm_head_size():
    # LM-head size: 2048 rows (half of one chunk of the fused head) of a padded 50280-token vocabulary, bf16 logits.
    from kernels.cross_entropy import fused as ce_fused
    from kernels.cross_entropy import ref as ce_ref

    torch.manual_seed(0)
    logits = (4 * torch.randn(2048, 50280, device="cuda")).bfloat16()
    targets = torch.randint(0, 50277, (2048,), device="cuda")
    targets[::7] = -100
    got_grad, lowp_grad, fp32_grad = logits.clone(), logits.clone(), logits.float()
    nats = ce_fused.cross_entropy_grad_(got_grad, targets)
    lowp = ce_ref.cross_entropy_grad_(lowp_grad, targets)
    fp32 = ce_ref.cross_entropy_grad_(fp32_grad, targets)
    assert_close("nats", nats, lowp, fp32)
    assert_close("grad", got_grad, lowp_grad, fp32_grad)


@pytest.mark.parametrize(
    "batch, dim, dstate, dt_rank",
    [(1, 1536, 16, 48), (64, 1536, 16, 48), (3, 2048, 64, 128), (2, 100, 16, 7)],
    ids=["130M-b1", "130M-b64", "d64", "odd-dim"],
)
def test_mixer_step_decode(batch, dim, dstate, dt_rank):
    from mixer_step_inputs import make_step_inputs, run_step

    from kernels.mixer_step import fused as step_fused
    from kernels.mixer_step import ref as step_ref

    inputs = make_step_inputs(batch, dim, dstate, dt_rank, 4, 4, torch.bfloat16, device="cuda")
    fast = run_step(step_fused.mixer_step, inputs)
    lowp, hi = run_step(step_ref.mixer_step, inputs), run_step(step_ref.mixer_step, inputs, upcast=True)
    for name, f, lo, h in zip(("out", "conv_state", "ssm_state"), fast, lowp, hi):
        assert_close(name, f, lo, h.to(lo.dtype) if name == "conv_state" else h)


@pytest.mark.parametrize("rows", [1, 2, 3, 16, 64])  # GEMV up to 2, tensor-core kernel from 3
@pytest.mark.parametrize("K, N", [(768, 3072), (1536, 768)], ids=["in_proj", "out_proj"])
def test_decode_linears(rows, K, N):
    from kernels.decode_linear import gemv
    from kernels.decode_linear import ref as linear_ref

    x = torch.randn(rows, K, device="cuda", dtype=torch.bfloat16)
    weight = (torch.randn(N, K, device="cuda") / K**0.5).to(torch.bfloat16)
    residual, norm_weight = torch.randn(rows, K, device="cuda"), 1 + 0.1 * torch.randn(K, device="cuda")
    up = lambda *ts: [t.float() for t in ts]  # noqa: E731
    assert_close("linear", gemv.decode_linear(x, weight), linear_ref.decode_linear(x, weight),
                 linear_ref.decode_linear(*up(x, weight)))  # fmt: skip
    fast = gemv.decode_rms_norm_linear(x, norm_weight, weight, None, residual, residual_in_fp32=True)
    lowp = linear_ref.decode_rms_norm_linear(x, norm_weight, weight, None, residual, residual_in_fp32=True)
    hi = linear_ref.decode_rms_norm_linear(*up(x, norm_weight, weight), None, residual, residual_in_fp32=True)
    assert_close("norm+linear", fast[0], lowp[0], hi[0])
    assert_close("residual", fast[1], lowp[1], hi[1])
