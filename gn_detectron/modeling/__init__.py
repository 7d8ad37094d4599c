"""Detectron2 integration: the norm registry, registered backbones and heads, build_model.
Importing this package registers the builders with detectron2's registries."""
from ..utils.requirements import require_detectron2

require_detectron2("gn_detectron.modeling")
from . import backbone, roi_heads  # noqa: F401  (registration)
from .build import apply_gn_spec, build_model
from .norm import NORM_REGISTRY, GNSpec, norm_factory

__all__ = ["build_model", "apply_gn_spec", "NORM_REGISTRY", "GNSpec", "norm_factory"]
