"""``GroupNorm``: a ``torch.nn.GroupNorm`` whose forward runs gn_detectron's kernels."""
from typing import Optional

import torch
from torch import nn

from ..ops import FUSED_ACTIVATIONS, group_norm

__all__ = ["GroupNorm", "convert_group_norm", "fuse_norm_activation"]


class GroupNorm(nn.GroupNorm):
    """Group Normalization over (N, C, *) input, optionally followed by a fused activation.

    A subclass of ``torch.nn.GroupNorm`` with the same parameters (``weight``, ``bias``: (C,)) and
    state_dict keys, so every GN checkpoint loads unchanged and detectron2's optimizer gives its
    parameters ``WEIGHT_DECAY_NORM``. Only ``forward`` differs: it calls
    :func:`gn_detectron.ops.group_norm`, which keeps the input's dtype (also under autocast) and
    memory format.

    Args:
        num_groups: G, a divisor of ``num_channels``.
        num_channels: C.
        eps: added to the variance.
        affine: learn per-channel ``weight`` and ``bias``.
        activation: None or "relu", applied inside the same kernel.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 activation: Optional[str] = None, device=None, dtype=None):
        if activation not in FUSED_ACTIVATIONS:
            names = ", ".join(repr(k) for k in FUSED_ACTIVATIONS)
            raise ValueError(f"GroupNorm: unknown activation {activation!r}; expected one of {names}")
        if num_groups <= 0 or num_channels % num_groups != 0:
            raise ValueError(
                f"GroupNorm: num_channels={num_channels} is not divisible by num_groups={num_groups}; "
                f"choose num_groups among the divisors of {num_channels}"
            )
        super().__init__(num_groups, num_channels, eps=eps, affine=affine, device=device, dtype=dtype)
        self.activation = None if activation == "none" else activation

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps, self.activation)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (f", activation={self.activation}" if self.activation else "")

    @classmethod
    def from_native(cls, module: nn.GroupNorm, activation: Optional[str] = None) -> "GroupNorm":
        """A plugin GroupNorm that shares ``module``'s parameters (no copy)."""
        new = cls(module.num_groups, module.num_channels, module.eps, module.affine, activation,
                  device=module.weight.device if module.affine else None)
        if module.affine:
            new.weight = module.weight
            new.bias = module.bias
        new.train(module.training)
        return new


def _is_relu(fn) -> bool:
    return isinstance(fn, nn.ReLU) or fn in (torch.relu, torch.relu_, nn.functional.relu, nn.functional.relu_)


def fuse_norm_activation(module: nn.Module) -> int:
    """Fuses ``norm`` + ``activation`` pairs of detectron2-style conv layers (any module with
    ``norm`` and ``activation`` attributes, applied in that order, such as
    ``detectron2.layers.Conv2d``) where the norm is the plugin's GroupNorm and the activation a
    ReLU: the GroupNorm applies the ReLU in its kernel and the layer's activation is removed.
    Returns the number of fused pairs."""
    fused = 0
    for m in module.modules():
        norm, act = getattr(m, "norm", None), getattr(m, "activation", None)
        if isinstance(norm, GroupNorm) and norm.activation is None and act is not None and _is_relu(act):
            norm.activation = "relu"
            m.activation = None
            fused += 1
    return fused


def convert_group_norm(module: nn.Module, fuse_activation: bool = True) -> nn.Module:
    """Returns ``module`` with every ``torch.nn.GroupNorm`` replaced by :class:`GroupNorm`,
    parameters kept (shared, not copied), in the style of ``nn.SyncBatchNorm.convert_sync_batchnorm``.
    A module that already is the plugin's GroupNorm is left as it is. With ``fuse_activation``,
    detectron2 ``Conv2d`` layers that apply GN then ReLU run both in one kernel
    (:func:`fuse_norm_activation`)."""
    module = _replace_group_norm(module)
    if fuse_activation:
        fuse_norm_activation(module)
    return module


def _replace_group_norm(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.GroupNorm) and not isinstance(module, GroupNorm):
        return GroupNorm.from_native(module)
    for name, child in module.named_children():
        new = _replace_group_norm(child)
        if new is not child:
            setattr(module, name, new)
    return module
