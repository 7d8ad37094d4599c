"""COCO evaluation backends: what loads the ground truth and the results and computes AP.

A backend is registered by name in ``COCO_EVAL_BACKENDS`` (``TEST.COCO_EVAL_BACKEND`` picks
one) and gives three things:

- ``load_ground_truth(json_file)``: the ground truth as the backend's own ``COCO`` object, read
  from the json file directly (no conversion from another library's objects);
- ``load_results(coco_gt, results, iou_type)``: the detections (a list of COCO result dicts
  with the dataset's category ids) as a ``COCO`` object of the same library, for evaluating
  ``iou_type``; ``results`` is left unchanged;
- ``evaluator(coco_gt, coco_dt, iou_type, max_dets_per_image)``: a ``COCOeval``-like object
  (``params``, ``evaluate``, ``accumulate``, ``summarize``, ``stats``, ``eval["precision"]``),
  which logs its progress with an ETA while the per-image loop runs long.

Registered: "faster_coco_eval" (the faster-coco-eval package: C++ matching and accumulation,
the same AP as pycocotools) and "pycocotools" (the official Python evaluation). When
faster-coco-eval is not installed, asking for it gives pycocotools with one warning.
"""
import contextlib
import copy
import functools
import io
import logging
from typing import Callable, Dict, Sequence

from .progress import ProgressETA

__all__ = [
    "COCO_EVAL_BACKENDS",
    "COCOEvalBackend",
    "coco_results_for_task",
    "register_coco_eval_backend",
    "get_coco_eval_backend",
]

logger = logging.getLogger(__name__)

# An evaluation loop logs its progress after this many seconds, then every PROGRESS_EVERY_S.
PROGRESS_FIRST_AFTER_S = 5.0
PROGRESS_EVERY_S = 10.0

# name -> class of a COCOEvalBackend; instantiating it imports its library (ImportError if absent).
COCO_EVAL_BACKENDS: Dict[str, Callable[[], "COCOEvalBackend"]] = {}


def register_coco_eval_backend(name):
    """Class decorator: registers a :class:`COCOEvalBackend` subclass under ``name``."""

    def register(cls):
        if name in COCO_EVAL_BACKENDS:
            raise ValueError(f"COCO evaluation backend {name!r} is already registered")
        cls.name = name
        COCO_EVAL_BACKENDS[name] = cls
        return cls

    return register


class COCOEvalBackend:
    """Interface of a COCO evaluation backend (see the module docstring)."""

    name = ""
    # the backend used, with one warning, when this one's library is not installed
    fallback = None

    def load_ground_truth(self, json_file):
        raise NotImplementedError

    def load_results(self, coco_gt, results: Sequence[dict], iou_type: str):
        raise NotImplementedError

    def evaluator(self, coco_gt, coco_dt, iou_type: str, max_dets_per_image: Sequence[int]):
        raise NotImplementedError


_warned_fallback = set()


def _progress_args():
    return {"logger": logger, "first_after": PROGRESS_FIRST_AFTER_S, "every": PROGRESS_EVERY_S}


def coco_results_for_task(results: Sequence[dict], iou_type: str):
    """Shallow copies of the COCO result dicts ``results`` for a COCO API's ``loadRes`` to
    evaluate ``iou_type``: ``loadRes`` adds keys ("area", "id", "iscrowd", ...) to the dicts it
    loads, and copies keep ``results`` as they were. For "segm" the copies have no "bbox":
    ``loadRes`` takes an instance's area (small / medium / large) from its box when there is
    one, from its mask otherwise, and mask AP must use the mask's."""
    if iou_type == "segm":
        return [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    return [dict(r) for r in results]


def get_coco_eval_backend(name: str) -> COCOEvalBackend:
    """The backend registered as ``name``. If its library is missing and it has a fallback,
    the fallback, with one warning per process.

    Raises:
        ValueError: ``name`` is not registered (the message lists the registered names).
        ImportError: the library is missing and there is no fallback.
    """
    if name not in COCO_EVAL_BACKENDS:
        raise ValueError(f"TEST.COCO_EVAL_BACKEND {name!r} is unknown; registered backends: "
                         f"{sorted(COCO_EVAL_BACKENDS)}")
    cls = COCO_EVAL_BACKENDS[name]
    try:
        return cls()
    except ImportError as e:
        if cls.fallback is None:
            raise
        if name not in _warned_fallback:
            _warned_fallback.add(name)
            logger.warning(f"COCO evaluation backend {name!r} is not available ({e}); using "
                           f"{cls.fallback!r} instead, which gives the same AP more slowly. "
                           f"Install it with `pip install faster-coco-eval`.")
        return get_coco_eval_backend(cls.fallback)


class _CountedIoUs:
    """A COCOeval mixin: each IoU (or OKS) computation of an (image, category) pair steps
    ``self._iou_progress``, which the evaluator sets up before its loop."""

    def computeIoU(self, imgId, catId):
        self._iou_progress.step()
        return super().computeIoU(imgId, catId)

    def computeOks(self, imgId, catId):
        self._iou_progress.step()
        return super().computeOks(imgId, catId)


# ---------------------------------------------------------------------------------------------
# pycocotools
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _pycocotools_eval_classes():
    from detectron2.evaluation.coco_evaluation import COCOevalMaxDets
    from pycocotools.cocoeval import COCOeval

    class _Progress(_CountedIoUs):
        """pycocotools' loops over (image, category) pairs, counted with an ETA."""

        def evaluate(self):
            p = self.params
            num_images = len(set(p.imgIds))
            num_cats = len(set(p.catIds)) if p.useCats else 1
            pairs = num_images * num_cats
            self._iou_progress = ProgressETA(pairs, f"COCO {p.iouType} evaluation, IoUs (image x category)",
                                             **_progress_args())
            self._match_progress = ProgressETA(pairs * len(p.areaRng),
                                               f"COCO {p.iouType} evaluation, matching (image x category x area)",
                                               **_progress_args())
            with contextlib.redirect_stdout(io.StringIO()):
                super().evaluate()

        def evaluateImg(self, imgId, catId, aRng, maxDet):
            self._match_progress.step()
            return super().evaluateImg(imgId, catId, aRng, maxDet)

        def accumulate(self, p=None):
            with contextlib.redirect_stdout(io.StringIO()):
                super().accumulate(p)

    class ProgressCOCOeval(_Progress, COCOeval):
        pass

    class ProgressCOCOevalMaxDets(_Progress, COCOevalMaxDets):
        pass

    return ProgressCOCOeval, ProgressCOCOevalMaxDets


@register_coco_eval_backend("pycocotools")
class PycocotoolsBackend(COCOEvalBackend):
    """The official COCO API (pycocotools), with detectron2's variant for ``maxDets`` other
    than 100."""

    def __init__(self):
        from pycocotools.coco import COCO

        self._coco_cls = COCO
        self._eval_cls, self._eval_max_dets_cls = _pycocotools_eval_classes()

    def load_ground_truth(self, json_file):
        with contextlib.redirect_stdout(io.StringIO()):
            return self._coco_cls(json_file)

    def load_results(self, coco_gt, results, iou_type):
        with contextlib.redirect_stdout(io.StringIO()):
            return coco_gt.loadRes(coco_results_for_task(results, iou_type))

    def evaluator(self, coco_gt, coco_dt, iou_type, max_dets_per_image):
        custom = iou_type != "keypoints" and max_dets_per_image[-1] != 100
        cls = self._eval_max_dets_cls if custom else self._eval_cls
        coco_eval = cls(coco_gt, coco_dt, iou_type)
        if iou_type != "keypoints":
            coco_eval.params.maxDets = list(max_dets_per_image)
        return coco_eval


# ---------------------------------------------------------------------------------------------
# faster-coco-eval
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _faster_eval_class():
    from faster_coco_eval import COCOeval_faster

    class ProgressCOCOevalFaster(_CountedIoUs, COCOeval_faster):
        """faster-coco-eval's evaluator; its Python loop over the (image, category) pairs that
        have both ground truth and detections is counted with an ETA."""

        def _prepare(self):
            super()._prepare()
            p = self.params
            pairs = getattr(self, "_nonempty_iou_pairs", None)
            total = len(pairs) if pairs is not None else len(p.imgIds) * (len(p.catIds) if p.useCats else 1)
            self._iou_progress = ProgressETA(total, f"COCO {p.iouType} evaluation, IoUs (image x category)",
                                             **_progress_args())

    return ProgressCOCOevalFaster


def _faster_message(message):
    """faster-coco-eval's messages: its summary lines (" Average Precision ...") are logged like
    the rest of the evaluation, its timings and steps only at DEBUG on its own logger."""
    if str(message).lstrip().startswith("Average"):
        logger.info(message)
    else:
        logging.getLogger("faster_coco_eval").debug(message)


@register_coco_eval_backend("faster_coco_eval")
class FasterCocoEvalBackend(COCOEvalBackend):
    """faster-coco-eval (``pip install faster-coco-eval``): its own ``COCO`` objects and C++
    evaluation; the same metrics as pycocotools."""

    fallback = "pycocotools"

    def __init__(self):
        from faster_coco_eval import COCO
        from faster_coco_eval.core import mask

        self._coco_cls = COCO
        self._mask = mask
        self._eval_cls = _faster_eval_class()

    def load_ground_truth(self, json_file):
        return self._coco_cls(json_file, print_function=_faster_message)

    def load_results(self, coco_gt, results, iou_type):
        """The detections as a faster-coco-eval ``COCO`` object, with what ``loadRes`` would add
        ("id", "iscrowd" 0, "area": of the box for "bbox", of the mask for "segm"), the areas
        of all masks computed in one call instead of one call per detection."""
        if iou_type not in ("bbox", "segm"):
            return coco_gt.loadRes(coco_results_for_task(results, iou_type))
        unknown = {r["image_id"] for r in results} - set(coco_gt.imgs)
        if unknown:
            raise ValueError(f"{len(unknown)} image ids of the results are not in the ground truth, "
                             f"e.g. {sorted(unknown)[:5]}")
        if iou_type == "segm":
            areas = self._mask.area([r["segmentation"] for r in results]).tolist() if results else []
        else:
            areas = [r["bbox"][2] * r["bbox"][3] for r in results]
        anns = [{**r, "area": area, "id": i + 1, "iscrowd": 0} for i, (r, area) in enumerate(zip(results, areas))]
        if iou_type == "segm":
            no_box = [a for a in anns if "bbox" not in a]
            if no_box:
                for a, box in zip(no_box, self._mask.toBbox([a["segmentation"] for a in no_box]).tolist()):
                    a["bbox"] = box
        coco_dt = self._coco_cls(print_function=_faster_message)
        coco_dt.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": anns,
                           "categories": copy.deepcopy(coco_gt.dataset["categories"])}
        coco_dt.createIndex()
        return coco_dt

    def evaluator(self, coco_gt, coco_dt, iou_type, max_dets_per_image):
        coco_eval = self._eval_cls(coco_gt, coco_dt, iou_type, print_function=_faster_message)
        if iou_type != "keypoints":
            coco_eval.params.maxDets = list(max_dets_per_image)
        return coco_eval
