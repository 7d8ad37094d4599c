"""Deformable convolutions (v1 and modulated v2) on ``torchvision.ops.deform_conv2d``.

detectron2 computes ``DeformConv`` and ``ModulatedDeformConv`` with its compiled ops
(``detectron2._C``); an install without them replaces both classes by stubs that raise on use,
so the zoo models with ``MODEL.RESNETS.DEFORM_ON_PER_STAGE`` cannot be built.
``torchvision.ops.deform_conv2d`` computes the same operation (CPU and CUDA, autograd, every
``groups`` and ``deformable_groups``, modulation through ``mask``) with the same layouts:

- offset: (N, 2 * deformable_groups * kh * kw, H_out, W_out), for each deformable group and
  kernel tap k (row-major over (i, j)) the pair (dy, dx) at channels 2k, 2k + 1 of that group;
- mask: (N, deformable_groups * kh * kw, H_out, W_out), one factor per group and tap;
- the input is sampled bilinearly at p0 + p_k + offset, with zeros outside the image.

The classes here keep detectron2's constructor, attributes, parameters and ``state_dict`` keys
(``weight``; ``bias`` for the modulated one), so detectron2 checkpoints of deformable models load
unchanged. :func:`install_into_detectron2` puts them in place of detectron2's stubs where
``detectron2._C`` is missing; where it is present detectron2's own classes stay.
"""
import sys
from typing import Optional

import torch
from torch import nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d

__all__ = ["DeformConv", "ModulatedDeformConv", "deform_conv", "modulated_deform_conv",
           "install_into_detectron2"]


def _check_shapes(input, offset, mask, weight, groups, deformable_groups):
    if input.dim() != 4:
        raise ValueError(f"deformable convolution: expected a 4D input (N, C, H, W), got {input.dim()}D "
                         f"of shape {tuple(input.shape)}")
    channels, kh, kw = input.shape[1], weight.shape[2], weight.shape[3]
    if weight.shape[1] * groups != channels:
        raise ValueError(f"deformable convolution: the input has {channels} channels but the weight "
                         f"{tuple(weight.shape)} with groups={groups} expects {weight.shape[1] * groups}")
    if offset.shape[1] != 2 * deformable_groups * kh * kw:
        raise ValueError(f"deformable convolution: offset must have 2 * deformable_groups * kh * kw = "
                         f"{2 * deformable_groups * kh * kw} channels (deformable_groups={deformable_groups}, "
                         f"kernel {kh}x{kw}), got {offset.shape[1]}")
    if mask is not None and mask.shape[1] != deformable_groups * kh * kw:
        raise ValueError(f"modulated deformable convolution: mask must have deformable_groups * kh * kw = "
                         f"{deformable_groups * kh * kw} channels, got {mask.shape[1]}")


def deform_conv(input, offset, weight, stride=1, padding=0, dilation=1, groups=1, deformable_groups=1,
                im2col_step=64):
    """Deformable convolution v1 (Dai et al. 2017), detectron2's ``deform_conv`` signature.

    Args:
        input: (N, C_in, H, W).
        offset: (N, 2 * deformable_groups * kh * kw, H_out, W_out), (dy, dx) per group and tap.
        weight: (C_out, C_in / groups, kh, kw).
        im2col_step: accepted for detectron2 compatibility; it only affected the speed of
            detectron2's kernel.
    Returns:
        (N, C_out, H_out, W_out), the input's dtype and device.
    """
    del im2col_step
    _check_shapes(input, offset, None, weight, groups, deformable_groups)
    return deform_conv2d(input, offset, weight, None, stride=_pair(stride), padding=_pair(padding),
                         dilation=_pair(dilation))


def modulated_deform_conv(input, offset, mask, weight, bias=None, stride=1, padding=0, dilation=1,
                          groups=1, deformable_groups=1):
    """Modulated deformable convolution (DCNv2, Zhu et al. 2019), detectron2's signature: as
    :func:`deform_conv`, each sampled value multiplied by ``mask`` (N, deformable_groups * kh * kw,
    H_out, W_out), then ``bias`` (C_out,) added."""
    _check_shapes(input, offset, mask, weight, groups, deformable_groups)
    return deform_conv2d(input, offset, weight, bias, stride=_pair(stride), padding=_pair(padding),
                         dilation=_pair(dilation), mask=mask)


def _norm_activation(conv, x):
    """detectron2's ``Conv2d`` order: the layer's ``norm``, then its ``activation``, where set."""
    if conv.norm is not None:
        x = conv.norm(x)
    if conv.activation is not None:
        x = conv.activation(x)
    return x


def _extra_repr(m, bias: bool) -> str:
    return (f"in_channels={m.in_channels}, out_channels={m.out_channels}, kernel_size={m.kernel_size}, "
            f"stride={m.stride}, padding={m.padding}, dilation={m.dilation}, groups={m.groups}, "
            f"deformable_groups={m.deformable_groups}, bias={bias}")


def _check_channels(in_channels, out_channels, groups):
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"in_channels={in_channels} and out_channels={out_channels} must both be "
                         f"divisible by groups={groups}")


class DeformConv(nn.Module):
    """Deformable convolution v1 with detectron2's interface: ``forward(x, offset)`` with x
    (N, C_in, H, W) and offset (N, 2 * deformable_groups * kh * kw, H_out, W_out), then the
    optional ``norm`` and ``activation``. No bias (as in detectron2). Parameter: ``weight``
    (C_out, C_in / groups, kh, kw)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, deformable_groups=1, bias=False, norm: Optional[nn.Module] = None,
                 activation=None):
        super().__init__()
        if bias:
            raise ValueError("DeformConv has no bias (as detectron2's); use ModulatedDeformConv for one")
        _check_channels(in_channels, out_channels, groups)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deformable_groups = deformable_groups
        self.norm = norm
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = None
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    def conv_weight(self) -> torch.Tensor:
        """The filter the convolution uses (Weight Standardization overrides it)."""
        return self.weight

    def forward(self, x, offset):
        x = deform_conv(x, offset, self.conv_weight(), self.stride, self.padding, self.dilation, self.groups,
                        self.deformable_groups)
        return _norm_activation(self, x)

    def extra_repr(self):
        return _extra_repr(self, False)


class ModulatedDeformConv(nn.Module):
    """Modulated deformable convolution (DCNv2) with detectron2's interface:
    ``forward(x, offset, mask)``, mask (N, deformable_groups * kh * kw, H_out, W_out) (detectron2's
    ResNet passes a sigmoid), then the optional ``norm`` and ``activation``. Parameters:
    ``weight`` (C_out, C_in / groups, kh, kw) and, with ``bias``, ``bias`` (C_out,)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, deformable_groups=1, bias=True, norm: Optional[nn.Module] = None,
                 activation=None):
        super().__init__()
        _check_channels(in_channels, out_channels, groups)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = stride  # kept as given, like detectron2's
        self.padding = padding
        self.dilation = dilation
        self.groups = groups
        self.deformable_groups = deformable_groups
        self.with_bias = bias
        self.norm = norm
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    def conv_weight(self) -> torch.Tensor:
        """The filter the convolution uses (Weight Standardization overrides it)."""
        return self.weight

    def forward(self, x, offset, mask):
        x = modulated_deform_conv(x, offset, mask, self.conv_weight(), self.bias, self.stride, self.padding,
                                  self.dilation, self.groups, self.deformable_groups)
        return _norm_activation(self, x)

    def extra_repr(self):
        return _extra_repr(self, self.with_bias)


def detectron2_has_compiled_ops() -> bool:
    """Whether ``detectron2._C`` (detectron2's compiled ops) can be imported."""
    try:
        from detectron2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


def install_into_detectron2() -> bool:
    """Where detectron2 is importable but its compiled ops are missing, replaces its stub
    ``DeformConv`` / ``ModulatedDeformConv`` / ``deform_conv`` / ``modulated_deform_conv`` by the
    ones of this module: in ``detectron2.layers.deform_conv``, in ``detectron2.layers``, and in
    ``detectron2.modeling.backbone.resnet`` if it was already imported (a later import of it takes
    the names from ``detectron2.layers``). Where ``detectron2._C`` is present nothing changes.
    Idempotent. Returns whether the classes of this module are now detectron2's."""
    try:
        import detectron2.layers as d2_layers
        import detectron2.layers.deform_conv as d2_deform_conv
    except ImportError:  # no detectron2: nothing to install into
        return False
    if detectron2_has_compiled_ops():
        return False
    names = {"DeformConv": DeformConv, "ModulatedDeformConv": ModulatedDeformConv,
             "deform_conv": deform_conv, "modulated_deform_conv": modulated_deform_conv}
    for name, obj in names.items():
        setattr(d2_deform_conv, name, obj)
    for module in (d2_layers, sys.modules.get("detectron2.modeling.backbone.resnet")):
        if module is not None:
            module.DeformConv = DeformConv
            module.ModulatedDeformConv = ModulatedDeformConv
    return True
