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
    "SHAPES_CATEGORIES",
    "check_training_datasets",
    "register_coco_json",
    "register_coco_json_datasets",
    "default_shapes_root",
    "generate_shapes_dataset",
    "register_shapes_dataset",
    "register_shapes_datasets",
]
