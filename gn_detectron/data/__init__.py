"""Built-in datasets (synthetic coloured shapes for instance segmentation, generated on first
use) and the checks of training and evaluation data."""
from .sanitize import CheckedImageMapper, DatasetError, load_checked_dataset_dicts, sanitize_dataset_dicts
"""Datasets: the built-in synthetic shapes (generated on first use) and COCO-format datasets of
one's own, registered from the config (``DATASETS.COCO_JSON``)."""
from .coco_json import check_training_datasets, register_coco_json, register_coco_json_datasets
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
    "check_training_datasets",
    "register_coco_json",
    "register_coco_json_datasets",
    "default_shapes_root",
    "generate_shapes_dataset",
    "load_checked_dataset_dicts",
    "register_shapes_dataset",
    "register_shapes_datasets",
    "sanitize_dataset_dicts",
]
