"""``COCOEvaluator``: detectron2's COCO evaluator with a choice of the library that computes AP
(``TEST.COCO_EVAL_BACKEND``), the ground truth read by that library from the json file, and
progress with an ETA for long evaluations."""
import itertools
import json
import logging
import os
import time

import torch
from detectron2.data import MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_json
from detectron2.evaluation import COCOEvaluator as _D2COCOEvaluator
from detectron2.utils.file_io import PathManager

from .backends import get_coco_eval_backend

__all__ = ["COCOEvaluator"]

logger = logging.getLogger(__name__)


class COCOEvaluator(_D2COCOEvaluator):
    """Evaluates instance detection / segmentation / keypoints with COCO's metrics, as
    detectron2's ``COCOEvaluator`` (same arguments, results and output files), with the AP
    computed by the backend ``backend`` (see :mod:`gn_detectron.evaluation.backends`):
    "faster_coco_eval" (default) or "pycocotools".

    Differences from detectron2's: the ground truth is read from the dataset's json file by the
    backend's own library (no conversion between libraries' objects); the results are copied,
    not mutated, so ``evaluate()`` may be called again; the per-image loop of a long evaluation
    logs progress with an ETA. detectron2's ``use_fast_impl`` (its compiled evaluator) is not
    used.
    """

    def __init__(self, dataset_name, tasks=None, distributed=True, output_dir=None, *,
                 max_dets_per_image=None, kpt_oks_sigmas=(), allow_cached_coco=True,
                 backend="faster_coco_eval"):
        # detectron2's __init__ reads the json with pycocotools; this one reads it with the backend.
        self._logger = logging.getLogger(__name__)
        self._distributed = distributed
        self._output_dir = output_dir
        self._backend = get_coco_eval_backend(backend)
        self._use_fast_impl = False
        self._max_dets_per_image = [1, 10, 100 if max_dets_per_image is None else max_dets_per_image]
        self._tasks = tuple(tasks) if tasks is not None else None
        self._cpu_device = torch.device("cpu")
        self._metadata = MetadataCatalog.get(dataset_name)
        if not hasattr(self._metadata, "json_file"):
            if output_dir is None:
                raise ValueError(f"dataset {dataset_name!r} has no json_file in its metadata: give "
                                 "COCOEvaluator an output_dir to write its COCO-format conversion to")
            cache_path = os.path.join(output_dir, f"{dataset_name}_coco_format.json")
            self._metadata.json_file = cache_path
            convert_to_coco_json(dataset_name, cache_path, allow_cached=allow_cached_coco)
        json_file = PathManager.get_local_path(self._metadata.json_file)
        self._coco_api = self._backend.load_ground_truth(json_file)
        # test-set files without annotations cannot be evaluated here
        self._do_evaluation = "annotations" in self._coco_api.dataset
        self._kpt_oks_sigmas = kpt_oks_sigmas

    @classmethod
    def from_config(cls, cfg, dataset_name, output_dir=None, distributed=True):
        """The evaluator of ``cfg`` for ``dataset_name``: tasks bbox (and segm with
        ``MODEL.MASK_ON``, keypoints with ``MODEL.KEYPOINT_ON``), ``TEST.COCO_EVAL_BACKEND``,
        ``TEST.KEYPOINT_OKS_SIGMAS``."""
        tasks = ["bbox"] + (["segm"] if cfg.MODEL.MASK_ON else []) + (["keypoints"] if cfg.MODEL.KEYPOINT_ON else [])
        return cls(dataset_name, tasks=tasks, distributed=distributed, output_dir=output_dir,
                   kpt_oks_sigmas=tuple(cfg.TEST.KEYPOINT_OKS_SIGMAS),
                   backend=cfg.TEST.get("COCO_EVAL_BACKEND", "faster_coco_eval"))

    @property
    def backend_name(self) -> str:
        return self._backend.name

    def _to_dataset_category_ids(self, coco_results):
        """Copies of ``coco_results`` with the model's contiguous category ids mapped back to the
        dataset's ids (``thing_dataset_id_to_contiguous_id``)."""
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id", None)
        if id_map is None:
            return coco_results
        reverse = {v: k for k, v in id_map.items()}
        out = []
        for r in coco_results:
            if r["category_id"] not in reverse:
                raise ValueError(f"A prediction has class {r['category_id']}, but the dataset has "
                                 f"{len(reverse)} classes (0..{len(reverse) - 1}): MODEL.ROI_HEADS.NUM_CLASSES "
                                 "must equal the dataset's category count")
            out.append({**r, "category_id": reverse[r["category_id"]]})
        return out

    def _eval_predictions(self, predictions, img_ids=None):
        """Evaluates the "instances" of ``predictions`` (one dict per image); fills
        ``self._results`` with one dict of metrics per task."""
        coco_results = list(itertools.chain(*[x["instances"] for x in predictions]))
        coco_results = self._to_dataset_category_ids(coco_results)
        tasks = self._tasks or self._tasks_from_predictions(coco_results)

        if self._output_dir:
            file_path = os.path.join(self._output_dir, "coco_instances_results.json")
            self._logger.info(f"Saving results to {file_path}")
            with PathManager.open(file_path, "w") as f:
                f.write(json.dumps(coco_results))

        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return

        self._logger.info(f"Evaluating {len(coco_results)} detections with {self._backend.name}")
        for task in sorted(tasks):
            if task not in {"bbox", "segm", "keypoints"}:
                raise ValueError(f"unknown COCO task {task!r}")
            coco_eval = (self.evaluate_task(coco_results, task, img_ids=img_ids)
                         if len(coco_results) > 0 else None)  # the COCO APIs fail on empty results
            self._results[task] = self._derive_coco_results(
                coco_eval, task, class_names=self._metadata.get("thing_classes"))

    def evaluate_task(self, coco_results, iou_type, img_ids=None):
        """Runs the backend's COCO evaluation of ``coco_results`` (COCO result dicts with the
        dataset's category ids) for ``iou_type``; returns the summarized ``COCOeval``-like
        object (``stats``, ``eval["precision"]``)."""
        start = time.perf_counter()
        coco_dt = self._backend.load_results(self._coco_api, coco_results, iou_type)
        coco_eval = self._backend.evaluator(self._coco_api, coco_dt, iou_type, self._max_dets_per_image)
        if img_ids is not None:
            coco_eval.params.imgIds = img_ids
        if iou_type == "keypoints":
            self._check_keypoints(coco_eval, coco_results)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
        self._logger.info(f"COCO {iou_type} evaluation ({self._backend.name}) took "
                          f"{time.perf_counter() - start:.2f} s")
        return coco_eval

    def _check_keypoints(self, coco_eval, coco_results):
        import numpy as np

        if self._kpt_oks_sigmas:
            coco_eval.params.kpt_oks_sigmas = np.array(self._kpt_oks_sigmas)
        num_dt = len(coco_results[0]["keypoints"]) // 3
        num_gt = len(next(iter(self._coco_api.anns.values()))["keypoints"]) // 3
        num_oks = len(coco_eval.params.kpt_oks_sigmas)
        if not num_oks == num_dt == num_gt:
            raise ValueError(f"Predictions have {num_dt} keypoints, the ground truth {num_gt}, and "
                             f"TEST.KEYPOINT_OKS_SIGMAS {num_oks} sigmas: they must agree")
