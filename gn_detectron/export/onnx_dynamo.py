"""ONNX translation of ``gn_detectron::group_norm_fwd`` for the dynamo-based exporter
(``torch.onnx.export(..., dynamo=True)``), written with onnxscript, standard ONNX ops only.

The exporter takes custom-op translations through its ``custom_translation_table`` argument
(it has no global registration of its own), so a dynamo export of a model with the plugin's
GroupNorm passes :func:`onnx_translation_table`::

    torch.onnx.export(model, args, dynamo=True, opset_version=18,
                      custom_translation_table=gn_detectron.export.onnx_translation_table(18))


Two translations:
- by default, for every opset: the ``InstanceNormalization`` decomposition (reshape to
  (N, G, M), normalize, reshape back, per-channel ``Mul`` / ``Add``), as PyTorch's own
  ``group_norm`` translation does;
- with ``group_normalization=True`` (opset 21 and later): ``GroupNormalization`` of opset 21
  (per-channel scale and bias; opset 18's version takes per-group ones and must not be used),
  ``stash_type`` float32, one node for runtimes with a GroupNormalization kernel. Not the
  default: ONNX Runtime 1.32 runs it through the ONNX function body, whose reshape to
  (N, G, -1) fails on empty batches (N = 0, the mask head of an image without detections).
Both compute in float32 for float16 / bfloat16 input (as the kernels do) and end with ``Relu``
for the fused activation. float64 input is normalized with ``ReduceMean`` / ``Sub`` / ``Mul``
(ONNX Runtime has neither float64 kernel). The op's mean and rstd outputs ((N, G)) are in the
graph too; inference graphs drop them.
"""
from typing import Optional

__all__ = ["onnx_translation_table", "GROUP_NORMALIZATION_OPSET"]

# First opset whose GroupNormalization takes per-channel scale and bias.
GROUP_NORMALIZATION_OPSET = 21


def _translations():
    """The onnxscript functions (imported on first use: onnxscript is needed only to export)."""
    from onnxscript import ir
    from onnxscript import opset18 as op
    from onnxscript import opset21 as op21
    from onnxscript.onnx_types import TensorType

    def compute_type(dtype):
        return ir.DataType.DOUBLE if dtype == ir.DataType.DOUBLE else ir.DataType.FLOAT

    def statistics(grouped, eps, ctype):
        """mean and rstd of (N, G, M) over M, kept as (N, G, 1)."""
        axes = op.Constant(value_ints=[2])
        mean = op.ReduceMean(grouped, axes, keepdims=1)
        centered = op.Sub(grouped, mean)
        var = op.ReduceMean(op.Mul(centered, centered), axes, keepdims=1)
        rstd = op.Reciprocal(op.Sqrt(op.Add(var, op.Constant(value=ir.tensor([eps], dtype=ctype)))))
        return mean, centered, rstd

    def grouped_shape(input, num_groups):
        """(N, G, M) with every size computed: Reshape cannot infer a -1 of an empty tensor,
        and empty batches are normal (the mask head of an image without detections)."""
        groups = op.Constant(value_ints=[num_groups])
        per_sample = op.ReduceProd(op.Shape(input, start=1), keepdims=1)
        return op.Concat(op.Shape(input, start=0, end=1), groups, op.Div(per_sample, groups), axis=0)

    def channel_param(param, ctype, rank):
        """(C,) -> (C, 1, ..., 1) in the compute type."""
        return op.Reshape(op.Cast(param, to=ctype), op.Constant(value_ints=[-1] + [1] * (rank - 2)))

    def finish(out, input, num_groups, mean, rstd, relu, ctype):
        if relu:
            out = op.Relu(out)
        if input.dtype != ctype:
            out = op.Cast(out, to=input.dtype)
        stats_shape = op.Concat(op.Shape(input, start=0, end=1), op.Constant(value_ints=[num_groups]), axis=0)
        return out, op.Reshape(mean, stats_shape), op.Reshape(rstd, stats_shape)

    def group_norm_fwd_instance_norm(input: TensorType, num_groups: int, weight: Optional[TensorType] = None,
                                     bias: Optional[TensorType] = None, eps: float = 1e-5, relu: bool = False):
        """group_norm_fwd -> (out, mean, rstd) with InstanceNormalization (opsets 18-20)."""
        ctype = compute_type(input.dtype)
        rank = len(input.shape)
        x = op.Cast(input, to=ctype) if input.dtype != ctype else input
        grouped = op.Reshape(x, grouped_shape(input, num_groups))
        mean, centered, rstd = statistics(grouped, eps, ctype)
        if ctype == ir.DataType.FLOAT:
            ones = op.Constant(value=ir.tensor([1.0] * num_groups, dtype=ctype))
            zeros = op.Constant(value=ir.tensor([0.0] * num_groups, dtype=ctype))
            normalized = op.InstanceNormalization(grouped, ones, zeros, epsilon=eps)
        else:
            normalized = op.Mul(centered, rstd)
        out = op.Reshape(normalized, op.Shape(input))
        if weight is not None:
            out = op.Mul(out, channel_param(weight, ctype, rank))
        if bias is not None:
            out = op.Add(out, channel_param(bias, ctype, rank))
        return finish(out, input, num_groups, mean, rstd, relu, ctype)

    def group_norm_fwd_group_normalization(input: TensorType, num_groups: int, weight: Optional[TensorType] = None,
                                           bias: Optional[TensorType] = None, eps: float = 1e-5,
                                           relu: bool = False):
        """group_norm_fwd -> (out, mean, rstd) with GroupNormalization-21 (opsets 21 and up)."""
        ctype = compute_type(input.dtype)
        if ctype == ir.DataType.DOUBLE:  # ONNX Runtime has no float64 kernel for it
            return group_norm_fwd_instance_norm(input, num_groups, weight, bias, eps, relu)
        channels = op.Shape(input, start=1, end=2)
        x = op.Cast(input, to=ctype) if input.dtype != ctype else input
        scale = op.Cast(weight, to=ctype) if weight is not None else op.Expand(
            op.Constant(value=ir.tensor([1.0], dtype=ctype)), channels)
        shift = op.Cast(bias, to=ctype) if bias is not None else op.Expand(
            op.Constant(value=ir.tensor([0.0], dtype=ctype)), channels)
        out = op21.GroupNormalization(x, scale, shift, epsilon=eps, num_groups=num_groups, stash_type=1)
        grouped = op.Reshape(x, grouped_shape(input, num_groups))
        mean, _, rstd = statistics(grouped, eps, ctype)
        return finish(out, input, num_groups, mean, rstd, relu, ctype)

    return group_norm_fwd_instance_norm, group_norm_fwd_group_normalization


def onnx_translation_table(opset_version: int = 18, group_normalization: bool = False) -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True,
    opset_version=opset_version)`` that translates ``torch.ops.gn_detectron.group_norm_fwd``
    to the ``InstanceNormalization`` decomposition, or with ``group_normalization`` (needs
    ``opset_version`` >= 21) to ``GroupNormalization``. Needs onnxscript and the compiled
    extension (the op must exist)."""
    import torch

    from ..ops._extension import load_extension

    if load_extension() is None:
        raise RuntimeError("gn_detectron: the compiled extension is not loaded, so models hold no "
                           "gn_detectron::group_norm_fwd to translate; see gn_detectron.ops.backend_info()")
    if opset_version < 18:
        raise ValueError(f"the dynamo-based ONNX exporter builds graphs of opset 18 and up, got "
                         f"opset_version={opset_version}; for opsets 11-17 use dynamo=False")
    if group_normalization and opset_version < GROUP_NORMALIZATION_OPSET:
        raise ValueError(f"GroupNormalization with per-channel scale and bias is in opset "
                         f"{GROUP_NORMALIZATION_OPSET} and later, got opset_version={opset_version}")
    instance_norm, group_norm = _translations()
    fn = group_norm if group_normalization else instance_norm
    return {torch.ops.gn_detectron.group_norm_fwd.default: fn}
