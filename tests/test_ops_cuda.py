"""CUDA-only checks of the group_norm kernels: CPU-vs-CUDA agreement on detection-sized shapes,
every dtype and memory format, fused ReLU, determinism, and tensors over 2^31 elements.

The generic cases (float64 reference, PyTorch comparison, gradcheck, errors) run on CUDA too,
from test_ops.py. tools/gpu_check.sh runs this file under each kernel path
(GN_DETECTRON_CUDA_PATH=auto|split|onepass).
"""
import math

import pytest
import torch

from _reference import group_norm_reference, reference_grads, rel_error
from gn_detectron.ops import group_norm

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

# (shape, groups)
SHAPES = [((2, 256, 100, 168), 32), ((2, 64, 200, 336), 32), ((1, 1024, 25, 42), 32),
          ((512, 256, 7, 7), 32), ((37, 256, 14, 14), 32), ((1, 96, 3, 5), 32),
          ((3, 64, 1, 1), 32), ((3, 32, 1, 1), 32), ((2, 48, 1000), 16), ((2, 256, 50, 50), 1)]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}


def _fmt(shape, name):
    if name == "nhwc":
        return torch.channels_last if len(shape) == 4 else None
    return torch.contiguous_format


@pytest.mark.parametrize("shape,G", SHAPES, ids=["x".join(map(str, s)) + f"-G{g}" for s, g in SHAPES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64],
                         ids=["fp32", "fp16", "bf16", "fp64"])
@pytest.mark.parametrize("fmt", ["nchw", "nhwc"])
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
def test_cuda_matches_reference_and_cpu(shape, G, dtype, fmt, relu):
    memory_format = _fmt(shape, fmt)
    if memory_format is None:
        pytest.skip("channels_last needs 4-D input here")
    C = shape[1]
    x = (torch.randn(shape, device="cuda") * 2 + 0.3).to(dtype).to(memory_format=memory_format)
    w = (torch.rand(C, device="cuda") + 0.5).requires_grad_()
    b = (torch.randn(C, device="cuda") * 0.3).requires_grad_()
    dy = torch.randn(shape, device="cuda").to(dtype).to(memory_format=memory_format)
    act = "relu" if relu else None
    xs = x.clone().requires_grad_()
    y = group_norm(xs, G, w, b, activation=act)
    assert y.dtype == dtype and y.is_contiguous(memory_format=memory_format)
    y.backward(dy)

    ref = group_norm_reference(x, G, w, b, relu=relu)
    dx_ref, dw_ref, db_ref = reference_grads(x, G, w, b, dy, relu=relu, output=y)
    tol = TOL[dtype]
    assert rel_error(y, ref) < tol
    if C // G * math.prod(shape[2:]) == 1:
        # one element per group: x - mean = 0, so dx is 0 up to rounding
        assert xs.grad.abs().max().item() < 1e-3
    else:
        assert rel_error(xs.grad, dx_ref) < 4 * tol
    assert rel_error(w.grad, dw_ref) < 4 * max(tol, 1e-5)
    assert rel_error(b.grad, db_ref) < 4 * max(tol, 1e-5)

    if dtype in (torch.float32, torch.float64) and x.numel() < 2e6:
        xc = x.detach().cpu().requires_grad_()
        yc = group_norm(xc, G, w.detach().cpu(), b.detach().cpu(), activation=act)
        yc.backward(dy.cpu())
        torch.testing.assert_close(y.cpu(), yc, rtol=10 * tol, atol=10 * tol)
        torch.testing.assert_close(xs.grad.cpu(), xc.grad, rtol=40 * tol, atol=40 * tol)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("shape", [(2, 256, 200, 336), (512, 256, 7, 7), (1, 64, 50, 84)])
def test_cuda_deterministic(shape, fmt):
    x = torch.randn(shape, device="cuda").to(memory_format=fmt)
    dy = torch.randn_like(x)
    w = torch.rand(shape[1], device="cuda") + 0.5
    b = torch.randn(shape[1], device="cuda")

    def run():
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        y = group_norm(xs, 32, ws, bs, activation="relu")
        y.backward(dy)
        return [y, xs.grad, ws.grad, bs.grad]

    first = run()
    for _ in range(3):
        for a, b_ in zip(first, run()):
            assert torch.equal(a, b_)


def test_cuda_every_element_written():
    """Outputs come from fresh allocations: poison the cache first so stale values would show."""
    for _ in range(2):
        torch.full((8 << 20,), float("nan"), device="cuda")
        x = torch.randn(3, 96, 33, 35, device="cuda")
        assert torch.isfinite(group_norm(x, 32)).all()
        xs = x.clone().requires_grad_()
        group_norm(xs, 32).backward(torch.randn_like(x))
        assert torch.isfinite(xs.grad).all()


def _check_groups(x, y, dx, dy, w, b, G, groups):
    """Checks output and input gradient of the listed (n, g) groups against the float64
    reference computed on that group alone (groups are independent)."""
    N, C = x.shape[:2]
    D = C // G
    for n, g in groups:
        cs = slice(g * D, (g + 1) * D)
        xg = x[n:n + 1, cs].double().requires_grad_()
        ref = group_norm_reference(xg, 1, w[cs], b[cs])
        ref.backward(dy[n:n + 1, cs].double())
        assert rel_error(y[n:n + 1, cs], ref) < 2e-3
        assert rel_error(dx[n:n + 1, cs], xg.grad) < 8e-3


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["nchw", "nhwc"])
def test_cuda_over_2_pow_31_elements(fmt):
    """64-bit indexing: a half tensor of more than 2^31 elements (about 4.3 GB)."""
    free, _ = torch.cuda.mem_get_info()
    if free < 24 << 30:
        pytest.skip("needs 24 GB of free GPU memory")
    C, G = 64, 32
    H, W = 2048, (2 ** 31) // (64 * 2048) + 3
    shape = (1, C, H, W)
    assert torch.Size(shape).numel() > 2 ** 31
    memory_format = torch.channels_last if fmt == "nhwc" else torch.contiguous_format
    x = torch.empty(shape, device="cuda", dtype=torch.float16, memory_format=memory_format).normal_()
    dy = torch.empty_like(x).normal_()
    w = torch.rand(C, device="cuda") + 0.5
    b = torch.randn(C, device="cuda")
    xs = x.requires_grad_()
    y = group_norm(xs, G, w, b)
    y.backward(dy)
    dx = xs.grad
    xs.requires_grad_(False)
    _check_groups(x, y, dx, dy, w, b, G, [(0, 0), (0, G // 2), (0, G - 1)])
