"""Built-in datasets (synthetic coloured shapes for instance segmentation, generated on first
use) and the checks of training and evaluation data."""
from .sanitize import CheckedImageMapper, DatasetError, load_checked_dataset_dicts, sanitize_dataset_dicts
from .shapes import (
    SHAPES_CATEGORIES,
    default_shapes_root,
    generate_shapes_dataset,
    register_shapes_dataset,
    register_shapes_datasets,
)

__all__ = [
    "CheckedImageMapper",
    "DatasetError",
    "SHAPES_CATEGORIES",
    "default_shapes_root",
    "generate_shapes_dataset",
    "load_checked_dataset_dicts",
    "register_shapes_dataset",
    "register_shapes_datasets",
    "sanitize_dataset_dicts",
]
