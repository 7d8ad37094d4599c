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
