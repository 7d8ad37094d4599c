"""Second-order gradients of gn_detectron.ops.group_norm: gradgradcheck in float64 and equality
with PyTorch's GroupNorm (then ReLU) for a gradient penalty, NCHW and channels_last, with and
without weight/bias and the fused ReLU. The first-order backward keeps its own kernel: a gradient
without create_graph has no graph."""
import pytest
import torch
import torch.nn.functional as F

from gn_detectron.ops import group_norm

CASES = [((2, 8, 3, 4), 2), ((2, 6, 5), 3), ((3, 4), 2), ((1, 8, 2, 3, 2), 4)]


def _inputs(shape, device, channels_last, affine, dtype=torch.float64):
    x = (torch.randn(shape, device=device, dtype=dtype) * 2 + 0.3)
    if channels_last:
        x = x.movedim(1, -1).contiguous().movedim(-1, 1)
        assert not x.is_contiguous() or x.dim() == 2
    x.requires_grad_()
    C = shape[1]
    w = (torch.randn(C, device=device, dtype=dtype) * 0.5 + 1).requires_grad_() if affine else None
    b = (torch.randn(C, device=device, dtype=dtype) * 0.5).requires_grad_() if affine else None
    return x, w, b


@pytest.mark.parametrize("shape,G", CASES, ids=[f"{'x'.join(map(str, s))}-G{g}" for s, g in CASES])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
def test_gradgradcheck(device, shape, G, channels_last, affine, relu):
    if channels_last and len(shape) == 2:
        pytest.skip("no channels_last layout for (N, C) input")
    x, w, b = _inputs(shape, device, channels_last, affine)
    act = "relu" if relu else None
    inputs = (x, w, b) if affine else (x,)

    def fn(*args):
        return group_norm(args[0], G, *(args[1:] if affine else (None, None)), eps=1e-5, activation=act)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)
    assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradient_penalty_matches_pytorch(device, channels_last, relu, dtype):
    """d/d(x, w, b) of |dL/dx|^2 (a gradient penalty) equals PyTorch's GroupNorm's, and is not
    zero (what a backward without a second-order formula silently gives)."""
    shape, G = (2, 16, 5, 6), 4
    results = []
    for impl in ("plugin", "torch"):
        torch.manual_seed(1)
        x, w, b = _inputs(shape, device, channels_last, True, dtype)
        target = torch.randn(shape, device=device, dtype=dtype)
        if impl == "plugin":
            y = group_norm(x, G, w, b, activation="relu" if relu else None)
        else:
            y = F.group_norm(x, G, w, b)
            y = torch.relu(y) if relu else y
        loss = ((y - target) ** 2).sum()
        (dx,) = torch.autograd.grad(loss, x, create_graph=True)
        penalty = dx.pow(2).sum()
        results.append(torch.autograd.grad(penalty, (x, w, b)))
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-4)
    for got, want, name in zip(results[0], results[1], ("x", "weight", "bias")):
        assert want.abs().max() > 1e-3, name
        torch.testing.assert_close(got, want, **tol, msg=lambda m: f"d penalty / d {name}: {m}")


def test_half_precision_double_backward_runs_in_float32_math(device):
    if device == "cpu":
        dtype = torch.bfloat16
    else:
        dtype = torch.float16
    x32 = torch.randn(2, 8, 4, 4, device=device)
    w = torch.rand(8, device=device) + 0.5
    out = []
    for dt in (dtype, torch.float32):
        x = x32.to(dt).requires_grad_()
        y = group_norm(x, 4, w.to(dt), None, activation="relu")
        (dx,) = torch.autograd.grad(y.float().pow(2).sum(), x, create_graph=True)
        (ddx,) = torch.autograd.grad(dx.float().pow(3).sum(), x)
        assert ddx.dtype == dt
        out.append(ddx.float())
    torch.testing.assert_close(out[0], out[1], rtol=0.1, atol=0.1 * out[1].abs().max().item())


def test_first_order_gradient_builds_no_graph(device):
    x, w, b = _inputs((2, 8, 3, 3), device, False, True, torch.float32)
    y = group_norm(x, 2, w, b, activation="relu")
    dx, dw = torch.autograd.grad(y.sum(), (x, w))
    assert dx.grad_fn is None and dw.grad_fn is None and not dx.requires_grad


def test_empty_batch_double_backward(device):
    x = torch.randn(0, 8, 3, 3, device=device, dtype=torch.float64, requires_grad=True)
    w = torch.ones(8, device=device, dtype=torch.float64, requires_grad=True)
    y = group_norm(x, 2, w, None)
    (dx,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (dw,) = torch.autograd.grad(dx.sum(), w, allow_unused=True)
    assert dx.shape == x.shape
    assert dw is None or (dw == 0).all()
