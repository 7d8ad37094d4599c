"""ONNX symbolic of ``gn_detectron::group_norm_fwd`` for the TorchScript-based exporter
(``torch.onnx.export(..., dynamo=False)``), opsets 11 to 20, standard ONNX ops only.

The graph is the decomposition PyTorch's own ``aten::group_norm`` symbolic uses: reshape to
(N, G, M), ``InstanceNormalization`` with unit scale and zero bias, reshape back, then the
per-channel affine as ``Mul`` / ``Add`` and the fused activation as ``Relu``. Unlike PyTorch's,
it computes in float32 for float16 / bfloat16 input (``Cast`` in and out), as the kernels do, so
that float32 parameters with half input (AMP) export too; float64 input is normalized with
``ReduceMean`` / ``Sub`` / ``Mul`` (ONNX Runtime has no float64 ``InstanceNormalization``). The
op's other two outputs, mean and rstd of shape (N, G) in float32 (float64 for float64 input), are
in the graph too; inference graphs do not use them and the exporter drops them. Unlike
PyTorch's symbolic (which reshapes to (0, G, -1)), the target shape is computed from the
input's, so that empty batches (N = 0) run in ONNX Runtime.
"""
import torch
from torch.onnx import symbolic_helper

__all__ = ["group_norm_fwd_symbolic", "register_onnx_symbolic", "OPSET_MIN"]

OPSET_MIN = 11
_OP_NAME = "gn_detectron::group_norm_fwd"

# The input's scalar type as the TorchScript graph names it -> its ONNX TensorProto data type,
# and the ONNX type of the computation (float32; float64 for float64 input).
_ONNX_TYPES = {"Float": 1, "Half": 10, "Double": 11, "BFloat16": 16}
_FLOAT, _DOUBLE, _BFLOAT16 = 1, 11, 16


def _const(g, values, dtype):
    return g.op("Constant", value_t=torch.tensor(values, dtype=dtype))


def _reduce_mean_last(g, x):
    """Mean over the last axis of a rank-3 tensor, axis kept."""
    if g.opset >= 18:  # axes became an input
        return g.op("ReduceMean", x, _const(g, [2], torch.int64), keepdims_i=1)
    return g.op("ReduceMean", x, axes_i=[2], keepdims_i=1)


def _channel_param(g, param, compute_onnx_type, rank):
    """A (C,) parameter as (C, 1, ..., 1) in the compute type, to broadcast over (N, C, *)."""
    if _ONNX_TYPES.get(param.type().scalarType()) != compute_onnx_type:
        param = g.op("Cast", param, to_i=compute_onnx_type)
    return symbolic_helper._reshape_helper(g, param, _const(g, [-1] + [1] * (rank - 2), torch.int64))


@symbolic_helper.parse_args("v", "i", "v", "v", "f", "b")
def group_norm_fwd_symbolic(g, input, num_groups, weight, bias, eps, relu):
    """Symbolic of ``group_norm_fwd(input, num_groups, weight, bias, eps, relu) -> (out, mean, rstd)``."""
    rank = symbolic_helper._get_tensor_rank(input)
    if rank is None:
        return symbolic_helper._unimplemented("gn_detectron::group_norm_fwd", "unknown input rank", input)
    channels = symbolic_helper._get_tensor_dim_size(input, 1)
    if channels is not None and channels % num_groups != 0:
        raise ValueError(f"gn_detectron::group_norm_fwd: {channels} channels are not divisible by "
                         f"num_groups={num_groups}")
    scalar_type = input.type().scalarType()
    if scalar_type not in _ONNX_TYPES:
        raise TypeError(f"gn_detectron::group_norm_fwd: ONNX export needs a float32, float64, float16 or "
                        f"bfloat16 input, got {scalar_type}")
    input_type = _ONNX_TYPES[scalar_type]
    compute_type = _DOUBLE if input_type == _DOUBLE else _FLOAT
    compute_dtype = torch.float64 if compute_type == _DOUBLE else torch.float32

    if input_type == _BFLOAT16 and g.opset < 13:
        raise ValueError("gn_detectron::group_norm_fwd: ONNX casts bfloat16 from opset 13 on; export with "
                         f"opset_version >= 13 (got {g.opset}) or convert the model to float32")
    x = g.op("Cast", input, to_i=compute_type) if input_type != compute_type else input
    # (N, G, M) with every size computed, not 0 / -1: Reshape cannot infer a -1 of an empty
    # tensor, and empty batches are normal (the mask head of an image without detections).
    shape = g.op("Shape", input)
    batch = g.op("Slice", shape, _const(g, [0], torch.int64), _const(g, [1], torch.int64))
    per_sample = g.op("ReduceProd", g.op("Slice", shape, _const(g, [1], torch.int64),
                                         _const(g, [rank], torch.int64)), keepdims_i=1)
    groups = _const(g, [num_groups], torch.int64)
    grouped = g.op("Reshape", x, g.op("Concat", batch, groups, g.op("Div", per_sample, groups), axis_i=0))
    # mean and rstd of each (sample, group), kept as (N, G, 1).
    mean = _reduce_mean_last(g, grouped)
    centered = g.op("Sub", grouped, mean)
    var = _reduce_mean_last(g, g.op("Mul", centered, centered))
    rstd = g.op("Reciprocal", g.op("Sqrt", g.op("Add", var, _const(g, [eps], compute_dtype))))
    if compute_type == _FLOAT:
        normalized = g.op("InstanceNormalization", grouped, _const(g, [1.0] * num_groups, compute_dtype),
                          _const(g, [0.0] * num_groups, compute_dtype), epsilon_f=eps)
    else:  # float64: ONNX Runtime has no float64 InstanceNormalization kernel
        normalized = g.op("Mul", centered, rstd)
    out = g.op("Reshape", normalized, shape)
    if not symbolic_helper._is_none(weight):
        out = g.op("Mul", out, _channel_param(g, weight, compute_type, rank))
    if not symbolic_helper._is_none(bias):
        out = g.op("Add", out, _channel_param(g, bias, compute_type, rank))
    if relu:
        out = g.op("Relu", out)
    if input_type != compute_type:
        out = g.op("Cast", out, to_i=input_type)

    # The op's mean and rstd outputs: (N, G), float32 (float64 for float64 input).
    stats_shape = g.op("Concat", batch, groups, axis_i=0)
    mean = g.op("Reshape", mean, stats_shape)
    rstd = g.op("Reshape", rstd, stats_shape)
    return out, mean, rstd


def register_onnx_symbolic():
    """Registers the symbolic with ``torch.onnx`` for opsets 11 and up (importing
    ``gn_detectron`` does it; calling it again is harmless)."""
    torch.onnx.register_custom_op_symbolic(_OP_NAME, group_norm_fwd_symbolic, OPSET_MIN)
