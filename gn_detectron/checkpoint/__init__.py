"""Checkpoints: safe loading, atomic saving (``GNCheckpointer``) and weight conversion to
detectron2's names."""
from .safe_load import CheckpointFileError, UnsafeCheckpointError, load_weights_file, safe_pickle_load
from .timm_resnet import convert_timm_resnet_to_d2

__all__ = ["convert_timm_resnet_to_d2", "GNCheckpointer", "load_weights_file", "safe_pickle_load",
           "CheckpointFileError", "UnsafeCheckpointError", "CheckpointSaveError", "WeightsNotLoadedError"]


def __getattr__(name):
    # GNCheckpointer needs detectron2; the rest needs only torch.
    if name in ("GNCheckpointer", "CheckpointSaveError", "WeightsNotLoadedError"):
        from . import checkpointer

        return getattr(checkpointer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
