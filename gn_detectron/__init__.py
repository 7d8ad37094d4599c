"""gn_detectron: fast Group Normalization for Detectron2.

- ``gn_detectron.ops.group_norm``: the functional op (CPU and CUDA kernels, fused ReLU).
- ``gn_detectron.layers.GroupNorm``: a drop-in ``torch.nn.GroupNorm`` that runs on it.
- ``gn_detectron.convert_group_norm(model)``: swaps every ``nn.GroupNorm`` of a model for it;
  ``gn_detectron.convert_to_native(model)`` swaps them back (for export without the plugin).
"""
from . import layers, ops
from .layers import GroupNorm, convert_group_norm
from .export import convert_to_native  # also registers the ONNX symbolic

layers.deform_conv.install_into_detectron2()  # deformable convs where detectron2._C is missing

__version__ = "0.1.0"
__all__ = ["ops", "layers", "GroupNorm", "convert_group_norm", "convert_to_native", "__version__"]


def __getattr__(name):
    # The detectron2 integration is imported on first use: the ops and layers need only torch.
    import importlib

    if name == "add_gn_config":
        return importlib.import_module(".config", __name__).add_gn_config
    if name in ("build_model", "modeling"):
        modeling = importlib.import_module(".modeling", __name__)
        return modeling.build_model if name == "build_model" else modeling
    raise AttributeError(f"module 'gn_detectron' has no attribute {name!r}")
