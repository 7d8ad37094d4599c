"""Built-in datasets: synthetic coloured shapes for instance segmentation, generated on first use."""
from .shapes import (
    SHAPES_CATEGORIES,
    default_shapes_root,
    generate_shapes_dataset,
    register_shapes_dataset,
    register_shapes_datasets,
)

__all__ = [
    "SHAPES_CATEGORIES",
    "default_shapes_root",
    "generate_shapes_dataset",
    "register_shapes_dataset",
    "register_shapes_datasets",
]
