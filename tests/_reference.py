"""Float64 reference of Group Normalization written from the math (DESIGN.md section 1)."""
import torch


def group_norm_reference(x, num_groups, weight=None, bias=None, eps=1e-5, relu=False):
    """Returns float64 GN(x) (then ReLU). Differentiable: autograd through it is the reference
    backward."""
    x64 = x.double()
    N, C = x64.shape[:2]
    xg = x64.reshape(N, num_groups, -1)
    mean = xg.mean(dim=-1, keepdim=True)
    var = ((xg - mean) ** 2).mean(dim=-1, keepdim=True)
    y = ((xg - mean) / torch.sqrt(var + eps)).reshape(x64.shape)
    shape = (1, C) + (1,) * (x64.dim() - 2)
    if weight is not None:
        y = y * weight.double().reshape(shape)
    if bias is not None:
        y = y + bias.double().reshape(shape)
    return torch.relu(y) if relu else y


def rel_error(a, b):
    """max |a - b| / max(max |b|, 1e-12)"""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item() if b.numel() else 0.0


def reference_grads(x, num_groups, weight, bias, dy, relu=False, output=None, eps=1e-5):
    """float64 (dx, dweight, dbias) of GN (then ReLU) by autograd through the reference. With
    ``relu``, the ReLU's gradient mask is taken from ``output`` (the op's own output, > 0) when
    given: where z is within rounding of 0 the float64 z may have the other sign, and the op's
    gradient is defined by its own output, as for torch.relu."""
    xr = x.detach().double().requires_grad_()
    wr = weight.detach().double().requires_grad_() if weight is not None else None
    br = bias.detach().double().requires_grad_() if bias is not None else None
    g = dy.double()
    if relu and output is not None:
        g = g * (output.detach() > 0)
        relu = False
    group_norm_reference(xr, num_groups, wr, br, eps=eps, relu=relu).backward(g)
    return xr.grad, (wr.grad if wr is not None else None), (br.grad if br is not None else None)
