"""COCO evaluation: detectron2's COCOEvaluator with a choice of the library that computes AP
(``TEST.COCO_EVAL_BACKEND``: "faster_coco_eval" or "pycocotools") and progress with an ETA."""
from .backends import (
    COCO_EVAL_BACKENDS,
    COCOEvalBackend,
    coco_results_for_task,
    get_coco_eval_backend,
    register_coco_eval_backend,
)
from .coco_evaluation import COCOEvaluator
from .progress import ProgressETA

__all__ = [
    "COCO_EVAL_BACKENDS",
    "COCOEvalBackend",
    "COCOEvaluator",
    "ProgressETA",
    "coco_results_for_task",
    "get_coco_eval_backend",
    "register_coco_eval_backend",
]
