"""Deployment: ONNX and TorchScript export of models that use the plugin's GroupNorm.

- ONNX, TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``, opsets 11-20):
  importing ``gn_detectron`` registers the symbolic of ``gn_detectron::group_norm_fwd``
  (:mod:`.onnx_symbolic`); nothing else to do.
- ONNX, dynamo-based exporter (``dynamo=True``, opsets 18 and up): pass
  ``custom_translation_table=gn_detectron.export.onnx_translation_table(opset_version)``
  (:mod:`.onnx_dynamo`; needs onnxscript).
- TorchScript: ``torch.jit.script`` / ``torch.jit.trace`` of a plugin model keep the plugin's
  kernels (the file then loads where gn_detectron is imported first); after
  :func:`convert_to_native` the file needs PyTorch only.
- :func:`convert_to_native`: every plugin GroupNorm back to ``torch.nn.GroupNorm``, fused ReLUs
  restored, same results.
- :mod:`.detection`: tracing, export and checking of detectron2 models (tools/export_model.py).
"""
from .native import convert_to_native
from .onnx_dynamo import onnx_translation_table
from .onnx_symbolic import register_onnx_symbolic

__all__ = ["convert_to_native", "onnx_translation_table", "register_onnx_symbolic"]

register_onnx_symbolic()
