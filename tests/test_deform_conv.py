"""Deformable convolutions (gn_detectron.layers.deform_conv) against a float64 reference written
from the definition, and their installation into detectron2."""
import math

import pytest
import torch

from gn_detectron.layers.deform_conv import (DeformConv, ModulatedDeformConv, deform_conv,
                                             detectron2_has_compiled_ops, modulated_deform_conv)


def bilinear_zeros_outside(img, y, x):
    """Samples img (C, H, W) at real positions (y, x), each (P,), bilinearly; the four corner
    pixels each count as 0 where they fall outside the image. Returns (C, P)."""
    C, H, W = img.shape
    y0, x0 = torch.floor(y), torch.floor(x)
    out = img.new_zeros(C, y.numel())
    for yy in (y0, y0 + 1):
        for xx in (x0, x0 + 1):
            weight = (1 - (y - yy).abs()) * (1 - (x - xx).abs())
            inside = (yy >= 0) & (yy <= H - 1) & (xx >= 0) & (xx <= W - 1)
            yi, xi = yy.clamp(0, H - 1).long(), xx.clamp(0, W - 1).long()
            out = out + img[:, yi, xi] * (weight * inside)
    return out


def deform_conv_reference(x, offset, weight, bias=None, mask=None, stride=(1, 1), padding=(0, 0),
                          dilation=(1, 1), swap_dy_dx=False):
    """Deformable convolution from its definition, in the input's dtype (use float64):
    y[n, o, p] = bias[o] + sum over taps k = (i, j) and input channels c of o's group of
    weight[o, c, i, j] * mask[n, g, k, p] * x_c(p0 + (i * dil_h, j * dil_w) + (dy, dx)),
    with p0 = p * stride - padding, (dy, dx) = offset[n, g, 2k], offset[n, g, 2k + 1] for the
    deformable group g of channel c, and x_c sampled bilinearly with zeros outside.
    ``swap_dy_dx`` reads the pair the other way round (to show the test notices)."""
    N, C, H, W = x.shape
    O, c_per_group, kh, kw = weight.shape
    groups = C // c_per_group
    K = kh * kw
    dg = offset.shape[1] // (2 * K)
    Ho, Wo = offset.shape[2:]
    base_y = (torch.arange(Ho, dtype=x.dtype) * stride[0] - padding[0]).view(Ho, 1).expand(Ho, Wo)
    base_x = (torch.arange(Wo, dtype=x.dtype) * stride[1] - padding[1]).view(1, Wo).expand(Ho, Wo)
    outputs = []
    for n in range(N):
        columns = []  # per input channel: (K, Ho * Wo)
        for g in range(dg):
            channels = x[n, g * (C // dg):(g + 1) * (C // dg)]
            taps = []
            for k in range(K):
                i, j = divmod(k, kw)
                dy, dx = offset[n, g * 2 * K + 2 * k], offset[n, g * 2 * K + 2 * k + 1]
                if swap_dy_dx:
                    dy, dx = dx, dy
                y = (base_y + i * dilation[0] + dy).reshape(-1)
                xx = (base_x + j * dilation[1] + dx).reshape(-1)
                sampled = bilinear_zeros_outside(channels, y, xx)
                if mask is not None:
                    sampled = sampled * mask[n, g * K + k].reshape(1, -1)
                taps.append(sampled)
            columns.append(torch.stack(taps, dim=1))  # (C / dg, K, Ho * Wo)
        columns = torch.cat(columns, dim=0)  # (C, K, P)
        out = []
        for gr in range(groups):
            w = weight[gr * (O // groups):(gr + 1) * (O // groups)].reshape(O // groups, -1)
            col = columns[gr * c_per_group:(gr + 1) * c_per_group].reshape(c_per_group * K, -1)
            out.append(w @ col)
        out = torch.cat(out, dim=0)
        if bias is not None:
            out = out + bias.view(-1, 1)
        outputs.append(out.view(O, Ho, Wo))
    return torch.stack(outputs)


def _out_size(size, k, s, p, d):
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def _case(groups, dg, stride, dilation, modulated, device="cpu", dtype=torch.float64, N=2, H=7, W=9):
    C, O, k, pad = 4, 6, 3, 1
    Ho, Wo = _out_size(H, k, stride, pad, dilation), _out_size(W, k, stride, pad, dilation)
    x = torch.randn(N, C, H, W, dtype=dtype)
    weight = torch.randn(O, C // groups, k, k, dtype=dtype)
    # Asymmetric offsets: dy spread over [-2.2, 2.2] around +0.4, dx over [-0.7, 0.7] around -0.3,
    # on a non-square image, so reading (dx, dy) instead of (dy, dx) changes every output.
    off = torch.rand(N, dg * k * k, 2, Ho, Wo, dtype=dtype) * 2 - 1
    off[:, :, 0] = off[:, :, 0] * 2.2 + 0.4
    off[:, :, 1] = off[:, :, 1] * 0.7 - 0.3
    offset = off.reshape(N, dg * k * k * 2, Ho, Wo)
    mask = torch.rand(N, dg * k * k, Ho, Wo, dtype=dtype) if modulated else None
    bias = torch.randn(O, dtype=dtype) if modulated else None
    tensors = dict(x=x, offset=offset, weight=weight, mask=mask, bias=bias)
    tensors = {n: (t.to(device) if t is not None else None) for n, t in tensors.items()}
    return tensors, dict(stride=stride, padding=pad, dilation=dilation, groups=groups, deformable_groups=dg)


def _run_op(t, a):
    if t["mask"] is None:
        return deform_conv(t["x"], t["offset"], t["weight"], a["stride"], a["padding"], a["dilation"],
                           a["groups"], a["deformable_groups"])
    return modulated_deform_conv(t["x"], t["offset"], t["mask"], t["weight"], t["bias"], a["stride"],
                                 a["padding"], a["dilation"], a["groups"], a["deformable_groups"])


def _run_reference(t, a, swap=False):
    s, p, d = a["stride"], a["padding"], a["dilation"]
    return deform_conv_reference(t["x"], t["offset"], t["weight"], t["bias"], t["mask"], (s, s), (p, p),
                                 (d, d), swap_dy_dx=swap)


CASES = [  # groups, deformable_groups, stride, dilation
    (1, 1, 1, 1), (2, 1, 1, 1), (1, 2, 1, 1), (2, 2, 2, 1), (1, 2, 1, 2), (2, 1, 2, 2),
]


@pytest.mark.parametrize("modulated", [False, True], ids=["v1", "modulated"])
@pytest.mark.parametrize("groups,dg,stride,dilation", CASES)
def test_forward_and_gradients_match_the_definition(groups, dg, stride, dilation, modulated):
    t, a = _case(groups, dg, stride, dilation, modulated)
    leaves = {n: v.requires_grad_() for n, v in t.items() if v is not None}
    y = _run_op(t, a)
    ref = _run_reference(t, a)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
    # the test tells (dy, dx) from (dx, dy)
    assert (_run_reference(t, a, swap=True) - ref).abs().max() > 0.1

    dy = torch.randn_like(y)
    got = torch.autograd.grad(y, list(leaves.values()), dy)
    want = torch.autograd.grad(ref, list(leaves.values()), dy)
    for name, g, w in zip(leaves, got, want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9, msg=lambda m: f"d{name}: {m}")


def test_modules_keep_detectron2_parameters_and_layout():
    m = ModulatedDeformConv(4, 8, 3, stride=2, padding=1, groups=2, deformable_groups=2, bias=True)
    assert list(m.state_dict()) == ["weight", "bias"]
    assert m.weight.shape == (8, 2, 3, 3) and m.bias.shape == (8,)
    v1 = DeformConv(4, 8, 3, padding=1, deformable_groups=2)
    assert list(v1.state_dict()) == ["weight"] and v1.bias is None
    assert "deformable_groups=2" in repr(v1)
    with pytest.raises(ValueError, match="no bias"):
        DeformConv(4, 8, 3, bias=True)
    with pytest.raises(ValueError, match="divisible by groups=3"):
        DeformConv(4, 8, 3, groups=3)

    x = torch.randn(2, 4, 9, 7)
    offset = torch.randn(2, 2 * 2 * 9, 5, 4)
    mask = torch.rand(2, 2 * 9, 5, 4)
    y = m(x, offset, mask)
    assert y.shape == (2, 8, 5, 4)
    torch.testing.assert_close(
        y.double(), deform_conv_reference(x.double(), offset.double(), m.weight.double(), m.bias.double(),
                                          mask.double(), (2, 2), (1, 1)), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"offset must have .* = 36 channels .* got 18"):
        m(x, offset[:, :18], mask)
    with pytest.raises(ValueError, match="mask must have"):
        m(x, offset, mask[:, :9])


def test_empty_batch_and_norm_activation():
    norm = torch.nn.GroupNorm(2, 8)
    m = DeformConv(4, 8, 3, padding=1, norm=norm, activation=torch.relu)
    y = m(torch.randn(0, 4, 6, 6, requires_grad=True), torch.randn(0, 18, 6, 6))
    assert y.shape == (0, 8, 6, 6)
    y.sum().backward()
    x, offset = torch.randn(1, 4, 6, 6), torch.randn(1, 18, 6, 6)
    torch.testing.assert_close(m(x, offset), torch.relu(norm(deform_conv(x, offset, m.weight, padding=1))))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("modulated", [False, True], ids=["v1", "modulated"])
def test_cuda_matches_the_definition(modulated):
    t, a = _case(2, 2, 2, 1, modulated, device="cuda")
    leaves = {n: v.requires_grad_() for n, v in t.items() if v is not None}
    y = _run_op(t, a)
    cpu = {n: (v.detach().cpu().requires_grad_() if v is not None else None) for n, v in t.items()}
    ref = _run_reference(cpu, a)
    torch.testing.assert_close(y.cpu(), ref, rtol=1e-9, atol=1e-9)
    dy = torch.randn_like(ref)
    got = torch.autograd.grad(y, list(leaves.values()), dy.cuda())
    want = torch.autograd.grad(ref, [cpu[n] for n in leaves], dy)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.cpu(), w, rtol=1e-8, atol=1e-8)


def test_installed_into_detectron2_where_its_compiled_ops_are_missing():
    import gn_detectron  # noqa: F401  (installs)
    import detectron2.layers
    import detectron2.layers.deform_conv as d2dc
    from detectron2.modeling.backbone import resnet

    if detectron2_has_compiled_ops():
        assert detectron2.layers.DeformConv is not DeformConv  # detectron2's own classes stay
        return
    for module in (detectron2.layers, d2dc, resnet):
        assert module.DeformConv is DeformConv and module.ModulatedDeformConv is ModulatedDeformConv
    assert d2dc.deform_conv is deform_conv and d2dc.modulated_deform_conv is modulated_deform_conv


@pytest.mark.parametrize("modulated", [False, True], ids=["v1", "modulated"])
def test_detectron2_deformable_resnet_trains(modulated):
    """detectron2's own ResNet builder with DEFORM_ON_PER_STAGE: builds, keeps its state_dict names
    (conv2 and conv2_offset), runs forward and backward."""
    import gn_detectron  # noqa: F401
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.NORM = "GN"
    cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, False, False, True]
    cfg.MODEL.RESNETS.DEFORM_MODULATED = modulated
    cfg.MODEL.RESNETS.DEFORM_NUM_GROUPS = 2
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    net = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    keys = net.state_dict().keys()
    assert "res5.0.conv2.weight" in keys and "res5.0.conv2_offset.weight" in keys
    assert type(net.res5[0].conv2) is (ModulatedDeformConv if modulated else DeformConv)
    assert net.res5[0].conv2_offset.out_channels == 2 * (27 if modulated else 18)  # (offset, mask) x 2 groups
    y = net(torch.randn(1, 3, 64, 96))["res5"]
    assert y.shape == (1, 2048, 2, 3) and torch.isfinite(y).all()
    y.square().mean().backward()
    assert net.res5[0].conv2_offset.weight.grad.abs().sum() > 0  # the offsets learn
    assert math.isfinite(net.res5[0].conv2.weight.grad.abs().sum().item())
