"""``convert_to_native``: the inverse of :func:`gn_detectron.convert_group_norm`."""
from torch import nn

from ..layers import GroupNorm

__all__ = ["convert_to_native"]


def _native_copy(module: GroupNorm) -> nn.GroupNorm:
    """A ``torch.nn.GroupNorm`` that shares ``module``'s parameters (no copy)."""
    device = module.weight.device if module.affine else None
    dtype = module.weight.dtype if module.affine else None
    native = nn.GroupNorm(module.num_groups, module.num_channels, module.eps, module.affine,
                          device=device, dtype=dtype)
    if module.affine:
        native.weight = module.weight
        native.bias = module.bias
    native.train(module.training)
    return native


def convert_to_native(module: nn.Module) -> nn.Module:
    """Returns ``module`` with every plugin :class:`~gn_detectron.layers.GroupNorm` replaced by
    ``torch.nn.GroupNorm`` (parameters shared, not copied; training mode kept) and every fused
    ReLU restored as a separate op, so that the model computes the same results with PyTorch's
    own operators only: its TorchScript and ONNX exports then load and run where gn_detectron
    is not installed. The inverse of :func:`gn_detectron.convert_group_norm`.

    A GroupNorm with a fused ReLU becomes ``nn.GroupNorm`` and the ReLU goes back where it came
    from: where the GroupNorm is the ``norm`` of a detectron2-style layer (any module with
    ``norm`` and ``activation`` attributes that applies them in that order, such as
    ``detectron2.layers.Conv2d``, which is where the plugin fuses) whose ``activation`` is None,
    that becomes ``nn.ReLU()``; anywhere else the GroupNorm is replaced by
    ``nn.Sequential(nn.GroupNorm, nn.ReLU())``, whose state_dict keys gain a ``0.``.
    State_dict keys are otherwise unchanged. Modifies ``module`` in place and returns it (or the
    replacement, where ``module`` itself is a plugin GroupNorm).
    """
    if isinstance(module, GroupNorm):
        native = _native_copy(module)
        return nn.Sequential(native, nn.ReLU()) if module.activation == "relu" else native
    for name, child in list(module.named_children()):
        if isinstance(child, GroupNorm) and child.activation == "relu" and name == "norm" \
                and hasattr(module, "activation") and module.activation is None:
            setattr(module, name, _native_copy(child))
            module.activation = nn.ReLU()
            continue
        new = convert_to_native(child)
        if new is not child:
            setattr(module, name, new)
    return module
