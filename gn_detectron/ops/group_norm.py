"""``group_norm``: the functional Group Normalization operator with a fused activation.

The compiled operators ``torch.ops.gn_detectron.group_norm_fwd`` / ``group_norm_bwd`` carry the
kernels and the autograd formula (csrc/ops.cpp); this module adds the fake (meta) kernels that
``torch.compile`` traces with, argument checks with Python exception types, and the fallback to
PyTorch's kernel where the extension is missing.
"""
import warnings
from typing import Optional

import torch
from torch import Tensor

from ._extension import kernel_device_types, load_extension

__all__ = ["group_norm", "FUSED_ACTIVATIONS"]

# Activations the kernels can apply to the normalized output (name -> the op's `relu` flag).
FUSED_ACTIVATIONS = {None: False, "none": False, "relu": True}


def _check_args(input: Tensor, num_groups: int, weight: Optional[Tensor], bias: Optional[Tensor]):
    if not isinstance(input, Tensor):
        raise TypeError(f"group_norm: expected input to be a Tensor, got {type(input).__name__}")
    if input.dim() < 2:
        raise ValueError(
            f"group_norm: expected input with at least 2 dimensions (N, C, *), got shape {tuple(input.shape)}"
        )
    if not input.is_floating_point():
        raise TypeError(
            f"group_norm: expected a floating-point input (float32, float64, float16 or bfloat16), got {input.dtype}"
        )
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups <= 0:
        raise ValueError(f"group_norm: num_groups must be a positive int, got {num_groups!r}")
    C = input.shape[1]
    if C % num_groups != 0:
        raise ValueError(
            f"group_norm: the number of channels must be divisible by num_groups, got C={C} channels "
            f"and num_groups={num_groups} (input shape {tuple(input.shape)}); choose num_groups among "
            f"the divisors of {C}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.dim() != 1 or t.shape[0] != C:
            raise ValueError(
                f"group_norm: expected {name} of shape ({C},) for an input with C={C} channels, got shape {tuple(t.shape)}"
            )
        if t.device != input.device:
            raise ValueError(
                f"group_norm: input is on {input.device} but {name} is on {t.device}; move both to the same device"
            )
        if not t.is_floating_point():
            raise TypeError(f"group_norm: expected a floating-point {name}, got {t.dtype}")


def _activation_flag(activation) -> bool:
    try:
        return FUSED_ACTIVATIONS[activation]
    except (KeyError, TypeError):
        names = ", ".join(repr(k) for k in FUSED_ACTIVATIONS)
        raise ValueError(f"group_norm: unknown activation {activation!r}; expected one of {names}") from None


_fallback_warned = set()


def _native_group_norm(input, num_groups, weight, bias, eps, relu):
    out = torch.nn.functional.group_norm(input, num_groups, weight, bias, eps)
    return torch.relu(out) if relu else out


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    activation: Optional[str] = None,
) -> Tensor:
    """Group Normalization (Wu & He, 2018), optionally followed by a fused activation.

    Args:
        input: (N, C, *) tensor, float32/float64/float16/bfloat16, NCHW-contiguous, channels_last
            (any number of spatial dims) or any strided layout (copied to NCHW first).
        num_groups: G, a divisor of C.
        weight, bias: optional (C,) per-channel affine parameters, any floating dtype (fp32
            parameters with fp16/bf16 input, as AMP leaves them, are fine).
        eps: added to the variance.
        activation: None or "relu": applied to the normalized output inside the same kernel.

    Returns:
        Tensor of the input's shape, dtype and memory format. Same values as
        ``torch.nn.functional.group_norm`` (then ``relu``); statistics and arithmetic are in
        float32 for half-precision input (float64 for float64). Differentiable in input, weight
        and bias. Under autocast, the output keeps the input's dtype (no upcast to float32).
    """
    if torch.jit.is_scripting():  # TorchScript compiles only this branch
        return _scripted_group_norm(input, num_groups, weight, bias, eps, activation)
    relu = _activation_flag(activation)
    _check_args(input, num_groups, weight, bias)
    if input.device.type not in _KERNEL_DEVICES:
        key = input.device.type
        if key not in _fallback_warned:
            _fallback_warned.add(key)
            reason = "the extension is not built" if load_extension() is None else f"it has no {key} kernel"
            warnings.warn(
                f"gn_detectron.ops.group_norm: {reason}; using PyTorch's group_norm on {key}. "
                "See gn_detectron.ops.backend_info().",
                RuntimeWarning,
                stacklevel=2,
            )
        return _native_group_norm(input, num_groups, weight, bias, eps, relu)
    return torch.ops.gn_detectron.group_norm_fwd(input, num_groups, weight, bias, float(eps), relu)[0]


# ----------------------------------------------------------------------------------------------
# The TorchScript path: ``torch.jit.script`` compiles the branch of ``group_norm`` that calls
# ``_scripted_group_norm``, bound below to the kernels' version where the extension is loaded
# (the script then needs the extension wherever it is loaded) and to PyTorch's group_norm where
# it is not. Same checks and messages as the eager path, in the forms TorchScript can compile.

def _script_activation_flag(activation: Optional[str]) -> bool:
    if activation is None or activation == "none":
        return False
    if activation == "relu":
        return True
    # The names of FUSED_ACTIVATIONS (TorchScript compiles no global strings).
    raise ValueError("group_norm: unknown activation '" + activation + "'; expected one of None, 'none', 'relu'")


def _script_check_args(input: Tensor, num_groups: int, weight: Optional[Tensor], bias: Optional[Tensor]):
    if input.dim() < 2:
        raise ValueError("group_norm: expected input with at least 2 dimensions (N, C, *), got shape {}".format(
            input.shape))
    if not input.is_floating_point():
        raise TypeError("group_norm: expected a floating-point input (float32, float64, float16 or bfloat16), "
                        "got {}".format(input.dtype))
    if num_groups <= 0:
        raise ValueError("group_norm: num_groups must be a positive int, got {}".format(num_groups))
    C = input.shape[1]
    if C % num_groups != 0:
        raise ValueError("group_norm: the number of channels must be divisible by num_groups, got C={} channels "
                         "and num_groups={} (input shape {}); choose num_groups among the divisors of {}".format(
                             C, num_groups, input.shape, C))
    if weight is not None and (weight.dim() != 1 or weight.shape[0] != C):
        raise ValueError("group_norm: expected weight of shape ({},) for an input with C={} channels, got shape "
                         "{}".format(C, C, weight.shape))
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != C):
        raise ValueError("group_norm: expected bias of shape ({},) for an input with C={} channels, got shape "
                         "{}".format(C, C, bias.shape))


def _scripted_group_norm_native(input: Tensor, num_groups: int, weight: Optional[Tensor], bias: Optional[Tensor],
                                eps: float, activation: Optional[str]) -> Tensor:
    relu = _script_activation_flag(activation)
    _script_check_args(input, num_groups, weight, bias)
    out = torch.nn.functional.group_norm(input, num_groups, weight, bias, eps)
    return torch.relu(out) if relu else out


def _scripted_group_norm_kernels(input: Tensor, num_groups: int, weight: Optional[Tensor], bias: Optional[Tensor],
                                 eps: float, activation: Optional[str]) -> Tensor:
    relu = _script_activation_flag(activation)
    _script_check_args(input, num_groups, weight, bias)
    if _has_kernel_for(input):
        return torch.ops.gn_detectron.group_norm_fwd(input, num_groups, weight, bias, eps, relu)[0]
    out = torch.nn.functional.group_norm(input, num_groups, weight, bias, eps)
    return torch.relu(out) if relu else out


def _kernel_on_cpu(input: Tensor) -> bool:
    return input.device.type == "cpu"


def _kernel_on_cpu_or_cuda(input: Tensor) -> bool:
    return input.device.type == "cpu" or input.device.type == "cuda"


# ----------------------------------------------------------------------------------------------
# Fake kernels of the compiled operators: output shapes, dtypes and layouts without computing.


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _like_layout(input: Tensor) -> Tensor:
    """An empty tensor shaped like ``input`` in the layout the kernels produce for it."""
    if input.dim() >= 3 and input.shape[1] > 1 and not input.is_contiguous() and input.movedim(1, -1).is_contiguous():
        return torch.empty_like(input.movedim(1, -1), memory_format=torch.contiguous_format).movedim(-1, 1)
    return torch.empty_like(input, memory_format=torch.contiguous_format)


def _fake_forward(input, num_groups, weight, bias, eps, relu):
    stats = input.new_empty((input.shape[0], num_groups), dtype=_stat_dtype(input.dtype))
    return _like_layout(input), stats, torch.empty_like(stats)


def _fake_backward(grad_output, input, mean, rstd, weight, bias, num_groups, relu, output_mask):
    none = input.new_empty((0,))
    dx = _like_layout(input) if output_mask[0] else none
    dw = weight.new_empty(weight.shape) if output_mask[1] else none
    db = bias.new_empty(bias.shape) if output_mask[2] else input.new_empty((0,))
    return dx, dw, db


def _register_python_parts():
    if load_extension() is None:
        return
    torch.library.register_fake("gn_detectron::group_norm_fwd")(_fake_forward)
    torch.library.register_fake("gn_detectron::group_norm_bwd")(_fake_backward)


_register_python_parts()
_KERNEL_DEVICES = kernel_device_types()
# The TorchScript path's choices, fixed when this module loads (TorchScript compiles no global
# containers): where the compiled kernels serve, and which version of the op scripts compile.
_has_kernel_for = _kernel_on_cpu_or_cuda if "cuda" in _KERNEL_DEVICES else _kernel_on_cpu
_scripted_group_norm = _scripted_group_norm_kernels if "cpu" in _KERNEL_DEVICES else _scripted_group_norm_native
