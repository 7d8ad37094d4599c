"""Layers: the plugin's ``GroupNorm`` module and the conversion of existing models; deformable
convolutions on torchvision's op."""
from .deform_conv import DeformConv, ModulatedDeformConv
from .group_norm import GroupNorm, convert_group_norm, fuse_norm_activation
from .weight_standardization import standardize_convolutions, standardize_weight

__all__ = ["GroupNorm", "convert_group_norm", "fuse_norm_activation", "DeformConv", "ModulatedDeformConv",
           "standardize_convolutions", "standardize_weight"]
