"""Checks of detection datasets before training: records that would crash deep inside the model
(missing images, degenerate boxes or masks, unknown categories) are skipped with one warning
that counts what was skipped and why; an unreadable annotation file stops with an error that
names it."""
import json
import logging
import math
import os
from collections import Counter
from typing import Dict, List, Sequence

__all__ = ["load_checked_dataset_dicts", "sanitize_dataset_dicts", "DatasetError"]

logger = logging.getLogger(__name__)


class DatasetError(ValueError):
    """A dataset that cannot be loaded at all (e.g. malformed annotation JSON)."""


def _box_problem(ann) -> str:
    bbox = ann.get("bbox")
    if bbox is None or len(bbox) != 4:
        return "box missing or not 4 numbers"
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox):
        return "box not finite"
    from detectron2.structures import BoxMode

    try:
        mode = BoxMode(ann.get("bbox_mode", BoxMode.XYWH_ABS))
        _, _, w, h = BoxMode.convert(list(bbox), mode, BoxMode.XYWH_ABS)
    except (ValueError, AssertionError):  # not a BoxMode, or a relative one detectron2 cannot train on
        return f"bbox_mode {ann.get('bbox_mode')!r} not an absolute XYXY/XYWH BoxMode"
    if w <= 0 or h <= 0:
        return "degenerate box (zero or negative size)"
    return ""


def _mask_problem(ann) -> str:
    if "segmentation" not in ann:
        return ""
    seg = ann["segmentation"]
    if isinstance(seg, list):
        polygons = [p for p in seg if len(p) >= 6 and len(p) % 2 == 0]
        if not polygons:
            return "empty or degenerate polygon mask"
        return ""
    if isinstance(seg, dict):
        if "counts" not in seg or "size" not in seg:
            return "malformed RLE mask"
        from pycocotools import mask as mask_util

        rle = seg if not isinstance(seg["counts"], list) else mask_util.frPyObjects(seg, *seg["size"])
        try:
            area = float(mask_util.area(rle))
        except Exception:  # pycocotools raises several types on a corrupt RLE
            return "malformed RLE mask"
        return "" if area > 0 else "empty RLE mask"
    return "unknown segmentation format"


def sanitize_dataset_dicts(dicts: List[Dict], num_classes: int, name: str = "dataset") -> List[Dict]:
    """Returns the records of ``dicts`` (detectron2 dataset dicts) that training can use.

    Dropped, and counted in one warning: records whose image file is missing; annotations with a
    missing, non-finite or empty box, an empty or malformed mask, or a category outside
    ``[0, num_classes)``. A record left with no annotation keeps its place (detectron2's
    ``FILTER_EMPTY_ANNOTATIONS`` decides about those)."""
    kept, skipped_records, skipped_anns = [], Counter(), Counter()
    for record in dicts:
        path = record.get("file_name", "")
        if not path or not os.path.isfile(path):
            skipped_records["image file missing"] += 1
            continue
        anns = []
        for ann in record.get("annotations", []):
            problem = _box_problem(ann) or _mask_problem(ann)
            cat = ann.get("category_id")
            if not problem and not (isinstance(cat, int) and 0 <= cat < num_classes):
                problem = f"category outside the {num_classes} classes"
            if problem:
                skipped_anns[problem] += 1
            else:
                anns.append(ann)
        if "annotations" in record:
            record = {**record, "annotations": anns}
        kept.append(record)
    if skipped_records or skipped_anns:
        parts = []
        if skipped_records:
            parts.append(f"{sum(skipped_records.values())} of {len(dicts)} images ("
                         + ", ".join(f"{k}: {v}" for k, v in skipped_records.items()) + ")")
        if skipped_anns:
            parts.append(f"{sum(skipped_anns.values())} annotations ("
                         + ", ".join(f"{k}: {v}" for k, v in skipped_anns.items()) + ")")
        logger.warning(f"{name}: skipped " + " and ".join(parts))
    if not kept:
        raise DatasetError(f"{name}: no usable image left after skipping bad records")
    return kept


def load_checked_dataset_dicts(names: Sequence[str], num_classes: int) -> List[Dict]:
    """Loads the registered datasets ``names`` and sanitizes their records
    (:func:`sanitize_dataset_dicts`). A dataset whose annotation file cannot be read raises
    :class:`DatasetError` naming the dataset and the file."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    out = []
    for name in names:
        json_file = MetadataCatalog.get(name).get("json_file", None)
        try:
            dicts = DatasetCatalog.get(name)
        except json.JSONDecodeError as e:
            raise DatasetError(f"dataset {name!r}: the annotation file {json_file} is not valid JSON "
                               f"(line {e.lineno}, column {e.colno}: {e.msg})") from e
        except KeyError as e:
            if name not in DatasetCatalog.list():
                raise
            raise DatasetError(f"dataset {name!r} ({json_file}): {e.args[0] if e.args else e}") from e
        except FileNotFoundError as e:
            raise DatasetError(f"dataset {name!r}: {e}") from e
        out.extend(sanitize_dataset_dicts(dicts, num_classes, name))
    return out
