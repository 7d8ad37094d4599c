"""gn_detectron.ops.group_norm against the float64 reference, PyTorch, and gradcheck.

Every test runs on the CPU and, where there is a GPU, on CUDA (the `device` parameter).
"""
import pytest
import torch
import torch.nn.functional as F

from _reference import group_norm_reference, reference_grads, rel_error
from gn_detectron.ops import backend_info, group_norm

# (shape, groups): G in {1, 2, 32, C}; channels per group not a power of two; 1-D/2-D/3-D
# spatial; H*W = 1; no spatial dims at all.
SHAPES = [
    ((2, 32, 5, 7), 1),
    ((2, 32, 5, 7), 2),
    ((2, 64, 6, 5), 32),
    ((2, 32, 5, 7), 32),  # G = C: instance norm
    ((3, 96, 4, 5), 32),  # 3 channels per group
    ((2, 48, 9), 16),  # 1-D spatial
    ((2, 16, 3, 4, 5), 4),  # 3-D spatial
    ((4, 64, 1, 1), 32),  # H*W = 1
    ((3, 12), 3),  # (N, C)
    ((1, 256, 13, 21), 32),
]


def _affine(C, device, dtype=torch.float32):
    return (torch.randn(C, device=device, dtype=dtype) * 0.5 + 1,
            torch.randn(C, device=device, dtype=dtype) * 0.5)


def _ids(shapes):
    return [f"{'x'.join(map(str, s))}-G{g}" for s, g in shapes]


@pytest.mark.parametrize("shape,G", SHAPES, ids=_ids(SHAPES))
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
def test_forward_matches_reference_and_torch(device, shape, G, relu):
    x = torch.randn(shape, device=device) * 3 + 0.5
    w, b = _affine(shape[1], device)
    y = group_norm(x, G, w, b, activation="relu" if relu else None)
    ref = group_norm_reference(x, G, w, b, relu=relu)
    tor = F.group_norm(x, G, w, b)
    tor = torch.relu(tor) if relu else tor
    assert y.shape == x.shape and y.dtype == x.dtype
    assert rel_error(y, ref) < 1e-5
    torch.testing.assert_close(y, tor, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,G", SHAPES, ids=_ids(SHAPES))
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
def test_backward_matches_reference(device, shape, G, relu):
    """Gradients within 1e-4 of the float64 reference, or no further from it than twice
    PyTorch's own fp32 error (groups of 2-3 elements are ill-conditioned for everyone)."""
    x = torch.randn(shape, device=device) * 2 - 1
    w, b = _affine(shape[1], device)
    dy = torch.randn(shape, device=device)
    act = "relu" if relu else None

    def grads(fn):
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        fn(xs, ws, bs).backward(dy)
        return xs.grad, ws.grad, bs.grad

    ours = grads(lambda x_, w_, b_: group_norm(x_, G, w_, b_, activation=act))
    native = grads(lambda x_, w_, b_: (torch.relu if relu else (lambda t: t))(F.group_norm(x_, G, w_, b_)))
    y = group_norm(x, G, w, b, activation=act)
    for got, nat, want in zip(ours, native, reference_grads(x, G, w, b, dy, relu=relu, output=y)):
        assert got.dtype == torch.float32
        assert rel_error(got, want) <= max(1e-4, 2 * rel_error(nat, want))


@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
@pytest.mark.parametrize("shape,G", [((2, 6, 3, 4), 3), ((2, 4, 5), 2), ((1, 6, 2, 2, 3), 2), ((3, 4), 4)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck_float64(device, shape, G, relu, layout):
    x = torch.randn(shape, device=device, dtype=torch.float64)
    if layout == "channels_last":
        if x.dim() < 3:
            pytest.skip("no spatial dims")
        x = x.movedim(1, -1).contiguous().movedim(-1, 1)
    w = torch.randn(shape[1], device=device, dtype=torch.float64)
    b = torch.randn(shape[1], device=device, dtype=torch.float64)
    act = "relu" if relu else None
    args = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_())
    assert torch.autograd.gradcheck(lambda x, w, b: group_norm(x, G, w, b, activation=act), args)


@pytest.mark.parametrize("memory_format,shape", [
    (torch.channels_last, (2, 64, 6, 7)),
    (torch.channels_last_3d, (2, 32, 3, 4, 5)),
])
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
def test_channels_last_native_and_preserved(device, memory_format, shape, relu):
    x = torch.randn(shape, device=device).to(memory_format=memory_format)
    w, b = _affine(shape[1], device)
    act = "relu" if relu else None
    xs = x.clone().requires_grad_()
    y = group_norm(xs, 8, w, b, activation=act)
    assert y.is_contiguous(memory_format=memory_format)
    ref = group_norm_reference(x, 8, w, b, relu=relu)
    assert rel_error(y, ref) < 1e-5
    dy = torch.randn(shape, device=device).to(memory_format=memory_format)
    y.backward(dy)
    assert xs.grad.is_contiguous(memory_format=memory_format)
    dx_ref, _, _ = reference_grads(x, 8, w, b, dy, relu=relu, output=y)
    assert rel_error(xs.grad, dx_ref) < 1e-4


def test_channels_last_1d(device):
    """(N, C, L) stored as (N, L, C): a channels-last layout with one spatial dim."""
    x = torch.randn(2, 5, 32, device=device).transpose(1, 2)  # shape (2, 32, 5), stride(1) == 1
    y = group_norm(x, 4)
    assert rel_error(y, group_norm_reference(x, 4)) < 1e-5
    assert y.stride() == x.stride()


@pytest.mark.parametrize("view", ["slice", "transpose_hw", "expanded"])
def test_non_contiguous_input(device, view):
    base = torch.randn(2, 32, 10, 12, device=device)
    x = {"slice": base[:, :, ::2, 1:],
         "transpose_hw": base.transpose(2, 3),
         "expanded": torch.randn(1, 32, 1, 12, device=device).expand(2, 32, 10, 12)}[view]
    assert not x.is_contiguous()
    w, b = _affine(32, device)
    y = group_norm(x, 8, w, b)
    assert rel_error(y, group_norm_reference(x, 8, w, b)) < 1e-5
    x2 = x.detach().requires_grad_()
    group_norm(x2, 8, w, b).sum().backward()
    xr = x.double().requires_grad_()
    group_norm_reference(xr, 8, w, b).sum().backward()
    assert rel_error(x2.grad, xr.grad) < 1e-4


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("param_dtype", ["same", "float32"])
def test_half_precision(device, dtype, tol, memory_format, param_dtype):
    x = (torch.randn(2, 64, 9, 11, device=device) * 4 + 2).to(dtype).to(memory_format=memory_format)
    pdt = dtype if param_dtype == "same" else torch.float32
    w, b = _affine(64, device, pdt)
    xs = x.clone().requires_grad_()
    ws, bs = w.clone().requires_grad_(), b.clone().requires_grad_()
    y = group_norm(xs, 32, ws, bs, activation="relu")
    assert y.dtype == dtype
    # reference on the same (rounded) input, in float64: only the output rounding differs
    ref = group_norm_reference(x, 32, w, b, relu=True)
    assert rel_error(y, ref) < tol
    dy = torch.randn_like(x, dtype=torch.float32).to(dtype)
    y.backward(dy)
    assert xs.grad.dtype == dtype and ws.grad.dtype == pdt and bs.grad.dtype == pdt
    dx_ref, dw_ref, db_ref = reference_grads(x, 32, w, b, dy, relu=True, output=y)
    assert rel_error(xs.grad, dx_ref) < 4 * tol
    assert rel_error(ws.grad, dw_ref) < 4 * tol
    assert rel_error(bs.grad, db_ref) < 4 * tol


@pytest.mark.parametrize("dtype,tiny", [(torch.float16, 2.0 ** -25), (torch.bfloat16, 2.0 ** -134)],
                         ids=["float16", "bfloat16"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("shape", [(2, 4, 3, 5), (3, 4, 7, 7)], ids=["3x5", "7x7"])
def test_fused_relu_gradient_follows_stored_output(device, dtype, tiny, memory_format, shape):
    """The fused ReLU passes the gradient exactly where the stored (rounded) output is positive,
    as torch.relu's backward does: a pre-activation below half the dtype's smallest subnormal is
    stored as 0 and passes nothing, one just above it is stored positive and passes dy. With
    gamma = 0 every pre-activation equals its channel's beta exactly."""
    x = torch.randn(shape, device=device).to(dtype).to(memory_format=memory_format)
    C = shape[1]
    w = torch.zeros(C, device=device)
    # below the rounding-to-zero bound, exactly on it (ties to even: 0), just above it, ordinary
    b = torch.tensor([tiny / 2, tiny, tiny * 1.5, 1.0], device=device)
    xs, ws, bs = x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()
    y = group_norm(xs, 2, ws, bs, activation="relu")
    stored_positive = y > 0
    assert stored_positive[:, 0].logical_not().all() and stored_positive[:, 1].logical_not().all()
    assert stored_positive[:, 2].all() and stored_positive[:, 3].all()
    dy = torch.randn(shape, device=device).to(dtype)
    y.backward(dy)
    mask = stored_positive.double()
    dims = [0] + list(range(2, len(shape)))
    torch.testing.assert_close(bs.grad.double(), (dy.double() * mask).sum(dims), rtol=1e-5, atol=1e-5)
    xhat = group_norm_reference(x, 2)
    torch.testing.assert_close(ws.grad.double(), (dy.double() * mask * xhat).sum(dims), rtol=1e-4, atol=1e-4)
    assert (xs.grad == 0).all()  # gamma = 0: no path from x to the output


def test_large_mean_accuracy(device):
    """mean 1e4, std 1: normalised at least as accurately as PyTorch does it, up to the float32
    rounding of the mean itself (half an ulp of 1e4 = 4.9e-4, times rstd = 1), which bounds any
    kernel that keeps the mean in float32, PyTorch's included."""
    x = torch.randn(2, 32, 40, 40, device=device) + 1e4
    ref = group_norm_reference(x, 8)
    err = (group_norm(x, 8).double() - ref).abs().max().item()
    err_torch = (F.group_norm(x, 8).double() - ref).abs().max().item()
    mean_rounding = 0.5 * torch.finfo(torch.float32).eps * 2 ** 13  # half an ulp at 1e4
    assert err <= max(err_torch, 1.5 * mean_rounding), (err, err_torch)
    # and the gradient stays accurate too
    dy = torch.randn_like(x)
    xs = x.clone().requires_grad_()
    group_norm(xs, 8).backward(dy)
    xr = x.double().requires_grad_()
    group_norm_reference(xr, 8).backward(dy.double())
    xt = x.clone().requires_grad_()
    F.group_norm(xt, 8).backward(dy)
    assert rel_error(xs.grad, xr.grad) <= max(2 * rel_error(xt.grad, xr.grad), 1e-3)


def test_fp16_large_values(device):
    """fp16 values up to 6e4 give finite, accurate statistics (fp32 accumulation)."""
    x = (torch.rand(2, 32, 16, 16, device=device) * 6e4).half()
    y = group_norm(x, 8)
    assert torch.isfinite(y).all()
    assert rel_error(y, group_norm_reference(x, 8)) < 2e-3


@pytest.mark.parametrize("affine", ["none", "weight_only", "bias_only"])
def test_weight_bias_optional(device, affine):
    x = torch.randn(2, 32, 6, 6, device=device)
    w, b = _affine(32, device)
    w = w if affine == "weight_only" else None
    b = b if affine == "bias_only" else None
    xs = x.clone().requires_grad_()
    ps = [t.clone().requires_grad_() if t is not None else None for t in (w, b)]
    y = group_norm(xs, 4, ps[0], ps[1], activation="relu")
    torch.testing.assert_close(y, torch.relu(F.group_norm(x, 4, w, b)), rtol=1e-5, atol=1e-5)
    y.sum().backward()
    # the float64 reference, not PyTorch: its CUDA backward fails for a bias without a weight
    dx, dw, db = reference_grads(x, 4, w, b, torch.ones_like(x), relu=True, output=y)
    assert rel_error(xs.grad, dx) < 1e-4
    for p, q in zip(ps, (dw, db)):
        if p is not None:
            assert rel_error(p.grad, q) < 1e-4


@pytest.mark.parametrize("shape", [(0, 32, 5, 5), (2, 32, 0, 5), (0, 32), (2, 32, 0)])
def test_empty(device, shape):
    x = torch.randn(shape, device=device, requires_grad=True)
    w = torch.ones(32, device=device, requires_grad=True)
    b = torch.zeros(32, device=device, requires_grad=True)
    y = group_norm(x, 8, w, b, activation="relu")
    assert y.shape == x.shape
    if x.numel() == 0 and x.shape[0] == 0:  # PyTorch accepts N = 0 but not empty spatial dims
        assert F.group_norm(x.detach(), 8, w.detach(), b.detach()).shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


def test_channels_last_empty_batch(device):
    x = torch.randn(0, 16, 4, 4, device=device).to(memory_format=torch.channels_last)
    assert group_norm(x, 4).shape == x.shape


def test_nan_propagates(device):
    x = torch.randn(2, 32, 4, 4, device=device)
    x[0, 3, 1, 1] = float("nan")
    y = group_norm(x, 8)
    assert torch.isnan(y[0, :4]).all()  # the group holding the NaN
    assert torch.isfinite(y[0, 4:]).all() and torch.isfinite(y[1]).all()


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_deterministic(device, memory_format):
    x = torch.randn(2, 64, 33, 47, device=device).to(memory_format=memory_format)
    w, b = _affine(64, device)
    dy = torch.randn_like(x)

    def run():
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        y = group_norm(xs, 32, ws, bs, activation="relu")
        y.backward(dy)
        return [y, xs.grad, ws.grad, bs.grad]

    first = run()
    for _ in range(3):
        for a, b_ in zip(first, run()):
            assert torch.equal(a, b_)


def test_deterministic_across_thread_counts():
    x = torch.randn(2, 64, 40, 40).to(memory_format=torch.channels_last)
    dy = torch.randn_like(x)
    w, b = _affine(64, "cpu")
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, max(2, old)):
            torch.set_num_threads(threads)
            for fmt in (torch.contiguous_format, torch.channels_last):
                xs, ws, bs = (t.clone().requires_grad_() for t in (x.contiguous(memory_format=fmt), w, b))
                y = group_norm(xs, 32, ws, bs)
                y.backward(dy)
                results.append((fmt, [y.contiguous(), xs.grad.contiguous(), ws.grad, bs.grad]))
    finally:
        torch.set_num_threads(old)
    by_fmt = {}
    for fmt, tensors in results:
        if fmt in by_fmt:
            for a, b_ in zip(by_fmt[fmt], tensors):
                assert torch.equal(a, b_)
        by_fmt[fmt] = tensors


def test_sample_independence(device):
    """A sample's output does not depend on the rest of the batch."""
    x = torch.randn(3, 32, 8, 8, device=device)
    alone = group_norm(x[1:2], 8)
    assert torch.equal(group_norm(x, 8)[1:2], alone)


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors that name the problem and the values.


@pytest.mark.parametrize("make,exc,words", [
    (lambda d: (torch.randn(2, 30, 4, 4, device=d), 8, None, None), ValueError, ["C=30", "num_groups=8"]),
    (lambda d: (torch.randn(2, 32, 4, device=d), 8, torch.ones(16, device=d), None), ValueError, ["weight", "(32,)", "16"]),
    (lambda d: (torch.randn(2, 32, 4, device=d), 8, None, torch.ones(32, 1, device=d)), ValueError, ["bias", "(32,)"]),
    (lambda d: (torch.randn(32, device=d), 8, None, None), ValueError, ["at least 2 dimensions", "(32,)"]),
    (lambda d: (torch.ones(2, 32, 4, dtype=torch.int32, device=d), 8, None, None), TypeError, ["floating-point", "int32"]),
    (lambda d: (torch.randn(2, 32, 4, device=d), 0, None, None), ValueError, ["num_groups", "0"]),
    (lambda d: (torch.randn(2, 32, 4, device=d), 8, torch.ones(32, device="meta"), None), ValueError, ["weight", "meta"]),
])
def test_bad_input_errors(device, make, exc, words):
    args = make(device)
    with pytest.raises(exc) as info:
        group_norm(*args)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_unknown_activation_lists_choices():
    with pytest.raises(ValueError, match="unknown activation 'gelu'.*'relu'"):
        group_norm(torch.randn(2, 4, 3), 2, activation="gelu")


def test_compiled_op_checks_arguments_itself():
    """The C++ front end checks too (for callers of torch.ops.gn_detectron directly)."""
    with pytest.raises(RuntimeError, match="C=30 channels and num_groups=8"):
        torch.ops.gn_detectron.group_norm_fwd(torch.randn(2, 30, 4), 8, None, None, 1e-5, False)
    with pytest.raises(RuntimeError, match=r"weight of shape \(32,\)"):
        torch.ops.gn_detectron.group_norm_fwd(torch.randn(2, 32, 4), 8, torch.ones(3), None, 1e-5, False)


# ---------------------------------------------------------------------------------------------
# The operator as PyTorch sees it: schema, fake kernels, autograd, compile, autocast.


def test_backend_info_reports_kernels():
    info = backend_info()
    assert info["build"] is not None, info["extension"]
    assert info["devices"]["cpu"]["float32"] == "gn_detectron"
    assert info["devices"]["cpu"]["bfloat16"] == "gn_detectron"
    if torch.cuda.is_available():
        assert info["devices"]["cuda"]["float16"] == "gn_detectron"


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck(device, layout):
    x = torch.randn(2, 8, 5, 6, device=device, requires_grad=True)
    if layout == "channels_last":
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(8, device=device, requires_grad=True)
    b = torch.randn(8, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.gn_detectron.group_norm_fwd.default, (x, 4, w, b, 1e-5, True))
    y, mean, rstd = torch.ops.gn_detectron.group_norm_fwd(x.detach(), 4, w.detach(), b.detach(), 1e-5, True)
    dy = torch.randn_like(y)
    torch.library.opcheck(torch.ops.gn_detectron.group_norm_bwd.default,
                          (dy, x.detach(), mean, rstd, w.detach(), b.detach(), 4, True, [True, True, True]))


def test_meta_tensors():
    x = torch.empty(2, 32, 7, 9, device="meta").to(memory_format=torch.channels_last)
    y = group_norm(x, 8, torch.empty(32, device="meta"), None, activation="relu")
    assert y.device.type == "meta" and y.shape == x.shape
    assert y.is_contiguous(memory_format=torch.channels_last)


class _ConvGN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.weight = torch.nn.Parameter(torch.rand(16) + 0.5)
        self.bias = torch.nn.Parameter(torch.randn(16))

    def forward(self, x):
        return group_norm(self.conv(x), 4, self.weight, self.bias, activation="relu").sum(dim=(2, 3))


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    model = _ConvGN()
    x = torch.randn(2, 3, 8, 8)
    eager = model(x)
    eager.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    out = compiled(x)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


def test_autocast_keeps_half_output(device):
    """Under autocast a conv gives half precision; GN keeps it (ATen's GN would upcast to fp32)."""
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    conv = torch.nn.Conv2d(3, 32, 3, padding=1).to(device)
    w, b = (torch.rand(32, device=device) + 0.5).requires_grad_(), torch.randn(32, device=device).requires_grad_()
    x = torch.randn(2, 3, 12, 12, device=device)
    with torch.autocast(device, dtype=dtype):
        h = conv(x)
        assert h.dtype == dtype
        y = group_norm(h, 8, w, b, activation="relu")
        native = F.group_norm(h, 8, w, b)
    assert y.dtype == dtype and w.dtype == torch.float32
    if device == "cuda":
        assert native.dtype == torch.float32  # what the plugin avoids: CUDA autocast upcasts GN
    ref = group_norm_reference(h.detach(), 8, w.detach(), b.detach(), relu=True)
    assert rel_error(y, ref) < 1.6e-2
    y.float().sum().backward()
    assert w.grad.dtype == torch.float32 and torch.isfinite(w.grad).all()


def test_fallback_without_extension_warns_once(tmp_path):
    """With the extension missing the op warns once and runs PyTorch's group_norm."""
    import subprocess
    import sys

    code = (
        "import sys, warnings\n"
        "sys.modules['gn_detectron._C'] = None\n"  # makes `from gn_detectron import _C` fail
        "import torch, torch.nn.functional as F\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    from gn_detectron.ops import group_norm, backend_info\n"
        "    x = torch.randn(2, 8, 4, 4)\n"
        "    y = group_norm(x, 4, activation='relu'); y = group_norm(x, 4, activation='relu')\n"
        "msgs = [str(m.message) for m in w if issubclass(m.category, RuntimeWarning)]\n"
        "assert torch.equal(y, torch.relu(F.group_norm(x, 4))), 'wrong fallback result'\n"
        "print(len([m for m in msgs if 'extension' in m or 'not built' in m]))\n"
        "print(backend_info()['devices']['cpu']['float32'])\n"
    )
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path),
                         env={**os.environ, "PYTHONPATH": root})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[-1] == "aten"
    assert lines[-2] == "2"  # the load warning and the fallback warning, each once


def test_large_cpu_outputs_same_with_and_without_huge_pages(tmp_path):
    """Outputs of 32 MiB or more get the transparent-huge-page advice on Linux; it is a hint
    about memory only: forward and backward are accurate and bitwise the same as in a process
    where it is turned off (GN_DETECTRON_CPU_HUGEPAGES=0)."""
    import os
    import subprocess
    import sys

    g = torch.Generator().manual_seed(0)
    shape = (2, 64, 256, 260)  # 34.1 MB of float32
    x = torch.randn(shape, generator=g) * 2 + 1
    w, b = torch.rand(64, generator=g) + 0.5, torch.randn(64, generator=g)
    dy = torch.randn(shape, generator=g)
    torch.save({"x": x, "w": w, "b": b, "dy": dy}, tmp_path / "inputs.pt")

    def run(x, w, b, dy):
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        y = group_norm(xs, 32, ws, bs, activation="relu")
        y.backward(dy)
        return y.detach(), xs.grad, ws.grad, bs.grad

    ours = run(x, w, b, dy)
    assert rel_error(ours[0], group_norm_reference(x, 32, w, b, relu=True)) < 1e-5

    code = (
        "import torch\n"
        "from gn_detectron.ops import group_norm\n"
        "d = torch.load('inputs.pt')\n"
        "xs, ws, bs = (d[k].clone().requires_grad_() for k in ('x', 'w', 'b'))\n"
        "y = group_norm(xs, 32, ws, bs, activation='relu')\n"
        "y.backward(d['dy'])\n"
        "torch.save([y.detach(), xs.grad, ws.grad, bs.grad], 'outputs.pt')\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "GN_DETECTRON_CPU_HUGEPAGES": "0",
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(tmp_path), env=env)
    assert out.returncode == 0, out.stderr
    theirs = torch.load(tmp_path / "outputs.pt")
    for a, c in zip(ours, theirs):
        assert torch.equal(a, c)
