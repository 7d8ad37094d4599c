"""Checkpoints: safe loading, atomic saving (``GNCheckpointer``) and weight conversion to
detectron2's names."""
from .safe_load import CheckpointFileError, UnsafeCheckpointError, load_weights_file, safe_pickle_load
from .timm_resnet import convert_timm_resnet_to_d2

__all__ = ["convert_timm_resnet_to_d2", "GNCheckpointer", "load_weights_file", "safe_pickle_load",
           "CheckpointFileError", "UnsafeCheckpointError"]


def __getattr__(name):
    # GNCheckpointer needs detectron2; the rest needs only torch.
    if name == "GNCheckpointer":
        from .checkpointer import GNCheckpointer

        return GNCheckpointer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
