"""gn_detectron: fast Group Normalization for Detectron2.

- ``gn_detectron.ops.group_norm``: the functional op (CPU and CUDA kernels, fused ReLU).
- ``gn_detectron.layers.GroupNorm``: a drop-in ``torch.nn.GroupNorm`` that runs on it.
- ``gn_detectron.convert_group_norm(model)``: swaps every ``nn.GroupNorm`` of a model for it;
  ``gn_detectron.convert_to_native(model)`` swaps them back (for export without the plugin).
- With detectron2 installed, ``import gn_detectron`` also registers the plugin with detectron2
  (see :func:`register_with_detectron2`), and ``gn_detectron.add_gn_config`` /
  ``gn_detectron.build_model`` configure and build models. Without detectron2 the op and the
  layers work as well (they need only torch).
"""
import os as _os

if _os.environ.get("GN_DETECTRON_FILTER_WARNINGS") == "1":  # set by the tools: before any import
    from .utils.warnings import filter_third_party_warnings

    filter_third_party_warnings()

from . import layers, ops  # noqa: E402
from .layers import GroupNorm, convert_group_norm  # noqa: E402
from .export import convert_to_native  # noqa: E402  (also registers the ONNX symbolic)

__version__ = "0.1.0"
__all__ = ["ops", "layers", "GroupNorm", "convert_group_norm", "convert_to_native", "register_with_detectron2",
           "add_gn_config", "build_model", "__version__"]

_registered = False


def register_with_detectron2() -> bool:
    """Registers everything the plugin adds to detectron2, once; called by ``import gn_detectron``
    when detectron2 is installed. Returns whether detectron2 was found.

    - the backbones and heads (``build_gn_resnet_backbone``, ``build_gn_resnet_fpn_backbone``,
      ``GNFastRCNNConvFCHead``, ``GNMaskRCNNConvUpsampleHead``) in detectron2's registries, and the
      norms of ``gn_detectron.modeling.NORM_REGISTRY``: importing ``gn_detectron.modeling``;
    - the built-in shapes datasets in ``DatasetCatalog`` (nothing is generated until used);
    - where detectron2 lacks its compiled ops, deformable convolutions on torchvision's
      ``deform_conv2d`` in place of its stubs (:mod:`gn_detectron.layers.deform_conv`).

    Only what registers is imported (``detectron2.modeling``, which the builders extend; not the
    engine, the evaluation or the checkpointing). A detectron2 that is installed but fails to
    import gives one warning with its error, and the op and layers stay usable.
    """
    global _registered
    from .utils.requirements import detectron2_available

    if _registered:
        return True
    if not detectron2_available():
        return False
    try:
        layers.deform_conv.install_into_detectron2()  # before detectron2.modeling imports the names
        from . import modeling  # noqa: F401  (registers the builders and the norms)
        from .data import register_shapes_datasets
    except ImportError as e:
        import warnings

        warnings.warn(f"gn_detectron: detectron2 is installed but could not be imported ({e}); the "
                      "detectron2 integration (gn_detectron.modeling, add_gn_config, build_model) is "
                      "unavailable until this is fixed. gn_detectron.ops and .layers work.",
                      RuntimeWarning, stacklevel=2)
        return False
    register_shapes_datasets()
    _registered = True
    return True


def __getattr__(name):
    # The detectron2 integration, for the names that need it.
    import importlib

    from .utils.requirements import require_detectron2

    if name in ("add_gn_config", "build_model", "modeling"):
        require_detectron2(f"gn_detectron.{name}")
    if name == "add_gn_config":
        return importlib.import_module(".config", __name__).add_gn_config
    if name in ("build_model", "modeling"):
        modeling = importlib.import_module(".modeling", __name__)
        return modeling.build_model if name == "build_model" else modeling
    raise AttributeError(f"module 'gn_detectron' has no attribute {name!r}")


register_with_detectron2()
