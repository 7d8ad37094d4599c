"""Checkpoints: weight conversion to detectron2's names."""
from .timm_resnet import convert_timm_resnet_to_d2

__all__ = ["convert_timm_resnet_to_d2"]
