"""Weight Standardization (Qiao et al., "Micro-Batch Training with Batch-Channel Normalization and
Weight Standardization", 2019) for the convolutions that feed a GroupNorm.

In each forward pass the filter of every output channel o is standardized:
``w_hat[o] = (w[o] - mean(w[o])) / (std(w[o]) + eps)``, mean and std over (C_in / groups, kh, kw),
std the unbiased one (divisor n - 1), ``eps`` = 1e-5 added to the std. This is the convention of
the paper's code and of mmcv's ``ConvWS2d`` (used for mmdetection's GN+WS models); timm's
``StdConv2d`` instead adds eps to the biased variance.

The stored parameter stays ``weight`` (and ``bias``): ``state_dict`` keys are unchanged, so GN
checkpoints load into a GN+WS model and back. :func:`standardize_convolutions` switches the
convolutions of a built model in place.
"""
import torch
from torch import nn

from .deform_conv import DeformConv, ModulatedDeformConv

__all__ = ["standardize_weight", "standardize_convolutions", "is_weight_standardized", "WS_EPS"]

WS_EPS = 1e-5


def standardize_weight(weight: torch.Tensor, eps: float = WS_EPS) -> torch.Tensor:
    """Returns ``weight`` (C_out, ...) with each output channel's filter at zero mean and unit
    (unbiased) standard deviation: (w - mean) / (std + eps). Differentiable; same dtype."""
    flat = weight.reshape(weight.shape[0], -1)
    centered = flat - flat.mean(dim=1, keepdim=True)
    # unbiased std through the 2-norm of the centred filter: measured faster on the CPU, forward and
    # backward, than torch.std or torch.var_mean
    std = torch.linalg.vector_norm(centered, dim=1, keepdim=True) / max(flat.shape[1] - 1, 1) ** 0.5
    return (centered * (1.0 / (std + eps))).reshape(weight.shape)


def _standardized_weight(module) -> torch.Tensor:
    """``module.weight`` standardized; without autograd (inference) computed once per version of
    the weight and kept, since it only changes when the weight does."""
    weight = module.weight
    if torch.is_grad_enabled() and weight.requires_grad:
        return standardize_weight(weight, module.ws_eps)
    key = (weight.data_ptr(), weight._version, weight.dtype, weight.device, module.ws_eps)
    cached = module.__dict__.get("_ws_cache")
    if cached is None or cached[0] != key:
        cached = (key, standardize_weight(weight.detach(), module.ws_eps))
        module.__dict__["_ws_cache"] = cached
    return cached[1]


class _WeightStandardizedConv2d:
    """Mixin over ``nn.Conv2d`` and its subclasses (detectron2's ``Conv2d``, which applies its
    ``norm`` then its ``activation``): the convolution uses the standardized weight."""

    ws_eps = WS_EPS

    def forward(self, x):
        x = self._conv_forward(x, _standardized_weight(self), self.bias)
        norm, activation = getattr(self, "norm", None), getattr(self, "activation", None)
        if norm is not None:
            x = norm(x)
        if activation is not None:
            x = activation(x)
        return x


class _WeightStandardizedDeformConv:
    """Mixin over gn_detectron's ``DeformConv`` / ``ModulatedDeformConv``: their forward takes the
    filter from ``conv_weight()``."""

    ws_eps = WS_EPS

    def conv_weight(self):
        return _standardized_weight(self)


_MIXINS = ((nn.Conv2d, _WeightStandardizedConv2d), ((DeformConv, ModulatedDeformConv), _WeightStandardizedDeformConv))
_CLASSES = {}


def _standardized_class(cls):
    """The weight-standardized subclass of ``cls`` (made once, importable from this module by its
    name so that models pickle), or None when ``cls`` is no supported convolution."""
    if cls in _CLASSES.values():
        return cls
    if cls not in _CLASSES:
        mixin = next((m for base, m in _MIXINS if issubclass(cls, base)), None)
        if mixin is None:
            return None
        name = f"WeightStandardized{cls.__name__}"
        while name in globals():
            name += "_"
        new = type(name, (mixin, cls), {"__module__": __name__, "__qualname__": name,
                                         "__doc__": f"{cls.__name__} with Weight Standardization."})
        globals()[name] = new
        _CLASSES[cls] = new
    return _CLASSES[cls]


def is_weight_standardized(module: nn.Module) -> bool:
    return isinstance(module, (_WeightStandardizedConv2d, _WeightStandardizedDeformConv))


def _convolutions_feeding_group_norm(model: nn.Module):
    """(name, conv) for every convolution whose output goes into a GroupNorm: a layer whose
    ``norm`` attribute is a GroupNorm (detectron2's ``Conv2d``, deformable convolutions), or a
    layer directly followed by a GroupNorm in an ``nn.Sequential``."""
    for name, m in model.named_modules():
        if isinstance(getattr(m, "norm", None), nn.GroupNorm) and hasattr(m, "weight"):
            yield name, m
        if isinstance(m, nn.Sequential):
            children = list(m.named_children())
            for (child_name, child), (_, nxt) in zip(children, children[1:]):
                if isinstance(nxt, nn.GroupNorm):
                    yield (f"{name}.{child_name}" if name else child_name), child


def standardize_convolutions(model: nn.Module, eps: float = WS_EPS) -> int:
    """Makes every convolution of ``model`` that feeds a GroupNorm standardize its weight in its
    forward pass, in place (the module's class becomes a subclass of its own class; parameters
    and ``state_dict`` keys unchanged). Returns the number of such convolutions. Raises
    ValueError naming a layer that feeds a GroupNorm but is no supported convolution
    (``nn.Conv2d`` and subclasses, gn_detectron's deformable convolutions)."""
    count = 0
    for name, conv in _convolutions_feeding_group_norm(model):
        cls = _standardized_class(type(conv))
        if cls is None:
            raise ValueError(
                f"Weight standardization: {name} ({type(conv).__module__}.{type(conv).__name__}) feeds a "
                "GroupNorm but is not a supported convolution (torch.nn.Conv2d and its subclasses, "
                "gn_detectron.layers.DeformConv / ModulatedDeformConv); set MODEL.GN.WEIGHT_STANDARDIZATION False")
        if conv.__class__ is not cls:
            conv.__class__ = cls
        conv.ws_eps = eps
        count += 1
    return count

