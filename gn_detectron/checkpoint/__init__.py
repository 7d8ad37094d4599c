"""Checkpoints: loading (``GNCheckpointer``) and weight conversion to detectron2's names."""
from .timm_resnet import convert_timm_resnet_to_d2

__all__ = ["convert_timm_resnet_to_d2", "GNCheckpointer"]


def __getattr__(name):
    # GNCheckpointer needs detectron2; the converters need only torch.
    if name == "GNCheckpointer":
        from .checkpointer import GNCheckpointer

        return GNCheckpointer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
