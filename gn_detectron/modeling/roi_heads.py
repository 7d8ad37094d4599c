"""Registered box and mask heads that take their norm by registered name and fuse GN + ReLU.

``MODEL.ROI_BOX_HEAD.NAME: "GNFastRCNNConvFCHead"`` and
``MODEL.ROI_MASK_HEAD.NAME: "GNMaskRCNNConvUpsampleHead"``: detectron2's conv-FC box head and
mask head (same config keys, same parameter names), with ``ROI_BOX_HEAD.NORM`` /
``ROI_MASK_HEAD.NORM`` looked up in the norm registry (configured by ``MODEL.GN``) and each
conv's GN + ReLU run as one kernel when ``MODEL.GN.FUSE_ACTIVATION`` is set.
"""
from detectron2.config import configurable
from detectron2.modeling.roi_heads.box_head import ROI_BOX_HEAD_REGISTRY, FastRCNNConvFCHead
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, MaskRCNNConvUpsampleHead

from ..layers import fuse_norm_activation
from .norm import GNSpec, norm_factory

__all__ = ["GNFastRCNNConvFCHead", "GNMaskRCNNConvUpsampleHead"]


class _RegisteredNormHead:
    """Mixin for detectron2's conv heads: ``conv_norm`` comes from the norm registry (the name in
    ``MODEL.<HEAD_CFG>.NORM``, configured by ``MODEL.GN``) and each conv's GN + ReLU is fused
    when ``MODEL.GN.FUSE_ACTIVATION`` is set."""

    HEAD_CFG = ""  # the config node of the head, e.g. "ROI_BOX_HEAD"

    @configurable
    def __init__(self, input_shape, *, fuse_activation: bool = True, **kwargs):
        super().__init__(input_shape, **kwargs)
        if fuse_activation:
            fuse_norm_activation(self)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["conv_norm"] = norm_factory(cfg, cfg.MODEL[cls.HEAD_CFG].NORM)
        ret["fuse_activation"] = GNSpec.from_config(cfg).fuse_activation
        return ret


@ROI_BOX_HEAD_REGISTRY.register()
class GNFastRCNNConvFCHead(_RegisteredNormHead, FastRCNNConvFCHead):
    """``FastRCNNConvFCHead`` with a registered norm and fused GN + ReLU."""

    HEAD_CFG = "ROI_BOX_HEAD"


@ROI_MASK_HEAD_REGISTRY.register()
class GNMaskRCNNConvUpsampleHead(_RegisteredNormHead, MaskRCNNConvUpsampleHead):
    """``MaskRCNNConvUpsampleHead`` with a registered norm and fused GN + ReLU."""

    HEAD_CFG = "ROI_MASK_HEAD"
