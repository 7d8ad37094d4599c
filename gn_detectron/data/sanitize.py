"""Checks of detection datasets before training and evaluation.

Records that would crash deep inside detectron2, pycocotools or the model (missing images,
degenerate boxes or masks, unknown categories, polygons with non-numeric, non-finite or absurd
coordinates, RLE masks of the wrong size or with malformed counts) are found when the dataset is
loaded. In training they are skipped with one warning that counts what was skipped and why and
names the first few (dataset, image, annotation id); in evaluation, where skipping would change
the result, the ones that would crash or corrupt it stop with a :class:`DatasetError` naming
them. An unreadable annotation file stops with an error that names it.

Image files are checked for existence when the dataset is loaded (a ``stat`` per image, under
0.5 s for COCO's 118k training images). Whether an existing file decodes as an image is checked
where it is read (:class:`CheckedImageMapper`): decoding every image up front costs 2.6-4.5 ms
per 640x480 JPEG (5-9 minutes for COCO train on one core), and a header check (PIL ``open`` +
``verify``, about 0.09 ms, some 10 s for COCO train) misses truncated JPEG data. Evaluation
datasets, which are smaller and where an error before inference saves its time, also get the
header check up front. (Measured on a shared 2-core machine, 2026-12-06, warm page cache.)

The annotation checks cost about 21 us per COCO-like annotation (one 24-coordinate polygon), 10
more than the checks before them; detectron2's ``load_coco_json`` takes about 100 us for one.
"""
import json
import logging
import math
import numbers
import os
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "load_checked_dataset_dicts",
    "sanitize_dataset_dicts",
    "CheckedImageMapper",
    "DatasetError",
    "MAX_IMAGE_SIZES_OUTSIDE",
]

logger = logging.getLogger(__name__)

# A box or polygon coordinate may lie at most this many image widths (x) or heights (y) outside
# the image: x in [-4 W, 5 W], y in [-4 H, 5 H]. Real annotations stray a few pixels outside at
# most; pycocotools' polygon rasterizer allocates memory in proportion to the polygon's perimeter
# (in 5x up-sampled pixels, in int32): coordinates near 1e10 exhaust memory and near 1e30
# overflow it and segfault (``pycocotools.mask.frPyObjects``, exit 139, no message).
MAX_IMAGE_SIZES_OUTSIDE = 4

# How many skipped records / annotations the warning (or error) names one by one.
NAMED_EXAMPLES = 5

# Problems of an annotation. The ones in _HARMLESS_IN_EVALUATION only concern training (what
# the model would learn from); the others would also crash or corrupt the COCO evaluation,
# which reads the ground truth from the dataset itself, so they cannot be skipped there.
BOX_FORMAT = "box missing or not 4 numbers"
BOX_NOT_FINITE = "box not finite"
BOX_FAR_OUTSIDE = "box far outside the image"
BOX_MODE = "bbox_mode not an absolute XYXY/XYWH BoxMode"
BOX_DEGENERATE = "degenerate box (zero or negative size)"
POLYGON_FORMAT = "polygon values not numbers"
POLYGON_NOT_FINITE = "polygon coordinate not finite"
POLYGON_FAR_OUTSIDE = "polygon coordinate far outside the image"
POLYGON_DEGENERATE = "polygon with fewer than 3 points or an odd number of coordinates"
POLYGON_EMPTY = "empty or degenerate polygon mask"
RLE_FORMAT = "malformed RLE mask"
RLE_SIZE = "RLE size does not match the image"
RLE_EMPTY = "empty RLE mask"
BITMASK_SIZE = "bitmask size does not match the image"
BITMASK_EMPTY = "empty bitmask"
SEGMENTATION_FORMAT = "unknown segmentation format"
ANNOTATION_FORMAT = "annotation not a dict"
CATEGORY = "category outside the {} classes"
_HARMLESS_IN_EVALUATION = {BOX_DEGENERATE, BOX_MODE, POLYGON_DEGENERATE, POLYGON_EMPTY, RLE_EMPTY,
                           BITMASK_EMPTY, CATEGORY}

# Problems of a whole record (an image).
IMAGE_MISSING = "image file missing"
IMAGE_UNREADABLE = "image file not readable"
IMAGE_SIZE = "image height/width not positive integers"


class DatasetError(ValueError):
    """A dataset that cannot be loaded or used (e.g. malformed annotation JSON, a missing
    evaluation image, an evaluation annotation that would crash the evaluation)."""


Problem = Tuple[str, str]  # (reason, the reason in words with the offending values)


_PLAIN_NUMBERS = {int, float}
# detectron2's BoxMode.XYXY_ABS and XYWH_ABS (IntEnum values; the module does not import
# detectron2, which imports torch, until it must).
_XYXY_ABS, _XYWH_ABS = 0, 1


def _is_number(value) -> bool:
    return type(value) in (int, float) or (isinstance(value, numbers.Real) and not isinstance(value, bool))


def _as_numbers(values) -> Optional[List[float]]:
    """``values`` (list, tuple or 1-D numeric array) as a list of numbers, or None if it is not
    a flat sequence of real numbers (strings, None, nested lists, bools)."""
    if isinstance(values, np.ndarray):
        if values.ndim != 1 or not (np.issubdtype(values.dtype, np.integer)
                                    or np.issubdtype(values.dtype, np.floating)):
            return None
        return values.tolist()
    if not isinstance(values, (list, tuple)):
        return None
    if not set(map(type, values)) <= _PLAIN_NUMBERS and not all(map(_is_number, values)):  # fast path first
        return None
    return list(values)


def _far_outside(xy: List[float], height: int, width: int) -> Optional[float]:
    """A coordinate of the finite coordinates ``xy`` (x0, y0, x1, y1, ...) that lies more than
    ``MAX_IMAGE_SIZES_OUTSIDE`` image sizes outside the image, or None."""
    k = MAX_IMAGE_SIZES_OUTSIDE
    for values, size in ((xy[0::2], width), (xy[1::2], height)):
        if values:
            low, high = min(values), max(values)
            if low < -k * size:
                return low
            if high > (k + 1) * size:
                return high
    return None


def _far_message(what, value, height, width):
    return (f"{what} coordinate {value:.6g} is more than {MAX_IMAGE_SIZES_OUTSIDE} image sizes outside "
            f"the {height}x{width} (HxW) image")


def _box_problem(ann, height, width) -> Optional[Problem]:
    bbox = ann.get("bbox")
    values = _as_numbers(bbox)
    if values is None or len(values) != 4:
        return BOX_FORMAT, f"bbox {bbox!r:.80} is not 4 numbers"
    if not all(map(math.isfinite, values)):
        return BOX_NOT_FINITE, f"bbox {bbox!r:.80} is not finite"
    mode = ann.get("bbox_mode", _XYWH_ABS)
    if (not isinstance(mode, numbers.Integral) or isinstance(mode, bool)
            or mode not in (_XYXY_ABS, _XYWH_ABS)):  # relative, rotated or no BoxMode
        return BOX_MODE, f"bbox_mode {mode!r} is not an absolute XYXY/XYWH BoxMode"
    x, y, w, h = values
    if mode == _XYXY_ABS:
        w, h = w - x, h - y
    far = _far_outside([x, y, x + w, y + h], height, width)
    if far is not None:
        return BOX_FAR_OUTSIDE, _far_message("box", far, height, width)
    if w <= 0 or h <= 0:
        return BOX_DEGENERATE, f"bbox {list(bbox)} has zero or negative size"
    return None


def _polygons_problem(polygons, height, width) -> Optional[Problem]:
    if not polygons:
        return POLYGON_EMPTY, "segmentation is an empty list of polygons"
    for polygon in polygons:
        xy = _as_numbers(polygon)
        if xy is None:
            return POLYGON_FORMAT, f"polygon {polygon!r:.80} is not a flat list of numbers"
        if not all(map(math.isfinite, xy)):
            return POLYGON_NOT_FINITE, f"polygon {polygon!r:.80} has a non-finite coordinate"
        far = _far_outside(xy, height, width)
        if far is not None:
            return POLYGON_FAR_OUTSIDE, _far_message("polygon", far, height, width)
        if len(xy) < 6 or len(xy) % 2:
            return POLYGON_DEGENERATE, f"polygon of {len(xy)} coordinates (needs an even number, at least 6)"
    return None


def _decode_rle_string(counts: bytes) -> Optional[List[int]]:
    """The run lengths of a COCO compressed RLE string, or None if it is malformed.

    The format (pycocotools ``maskApi.c``, ``rleToString``): each run length is written in
    5-bit groups, least significant first, one character (48 + 6 bits) per group; bit 5 says
    that another group follows, bit 4 of the last group is the sign; from the third run on, the
    difference to the run two places before is written. pycocotools exposes no decoder, and its
    own one trusts the string (a run total below H*W leaves part of the decoded mask unset)."""
    runs, position = [], 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts) or not 48 <= counts[position] < 48 + 64:
                return None
            group = counts[position] - 48
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _rle_problem(rle, height, width) -> Optional[Problem]:
    size, counts = rle.get("size"), rle.get("counts")
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in size)):
        return RLE_FORMAT, f"RLE size {size!r:.80} is not [height, width]"
    if list(size) != [height, width]:
        return RLE_SIZE, f"RLE size {list(size)} is not the image's [height, width] [{height}, {width}]"
    if isinstance(counts, (str, bytes)):
        try:
            runs = _decode_rle_string(counts.encode("ascii") if isinstance(counts, str) else counts)
        except UnicodeEncodeError:
            runs = None
        if runs is None:
            return RLE_FORMAT, "RLE counts string is not COCO's compressed format"
    elif isinstance(counts, (list, tuple)) and all(isinstance(c, numbers.Integral) and not isinstance(c, bool)
                                                    for c in counts):
        runs = [int(c) for c in counts]
    else:
        return RLE_FORMAT, f"RLE counts of type {type(counts).__name__} (needs a string or a list of integers)"
    if any(r < 0 for r in runs) or sum(runs) != height * width:
        return RLE_FORMAT, (f"RLE runs (negative: {sum(r < 0 for r in runs)}) sum to {sum(runs)}, "
                            f"not height*width = {height * width}")
    if sum(runs[1::2]) == 0:
        return RLE_EMPTY, "RLE mask has no foreground pixel"
    return None


def _mask_problem(ann, height, width) -> Optional[Problem]:
    if "segmentation" not in ann:
        return None
    seg = ann["segmentation"]
    if isinstance(seg, (list, tuple)):
        return _polygons_problem(seg, height, width)
    if isinstance(seg, dict):
        return _rle_problem(seg, height, width)
    if isinstance(seg, np.ndarray) and seg.ndim == 2:  # a bitmask (detectron2 takes those too)
        if seg.shape != (height, width):
            return BITMASK_SIZE, f"bitmask of shape {seg.shape} in a {height}x{width} image"
        return None if seg.any() else (BITMASK_EMPTY, "bitmask has no foreground pixel")
    return SEGMENTATION_FORMAT, f"segmentation of type {type(seg).__name__}"


def _annotation_problem(ann, num_classes, height, width) -> Optional[Problem]:
    if not isinstance(ann, dict):
        return ANNOTATION_FORMAT, f"annotation of type {type(ann).__name__}"
    problem = _box_problem(ann, height, width) or _mask_problem(ann, height, width)
    if problem:
        return problem
    cat = ann.get("category_id")
    if not (isinstance(cat, numbers.Integral) and not isinstance(cat, bool) and 0 <= cat < num_classes):
        return CATEGORY, f"category_id {cat!r} outside [0, {num_classes})"
    return None


def _with_compressed_rle(ann):
    """``ann``, with an uncompressed RLE (list counts, which detectron2's mapper cannot decode)
    replaced by the compressed one."""
    seg = ann.get("segmentation")
    if isinstance(seg, dict) and isinstance(seg["counts"], (list, tuple)):
        from pycocotools import mask as mask_util

        return {**ann, "segmentation": mask_util.frPyObjects(dict(seg, counts=list(seg["counts"])), *seg["size"])}
    return ann


def image_problem(path, decode=True) -> Optional[str]:
    """Why the image file ``path`` cannot be used, or None. ``decode``: read it as detectron2
    does (``read_image``); else only open it and verify its header (PIL ``verify``: cheap,
    finds files that are no image and broken PNG chunks, not truncated JPEG data)."""
    if not os.path.isfile(path):
        return IMAGE_MISSING
    try:
        if decode:
            from detectron2.data.detection_utils import read_image

            read_image(path)
        else:
            from PIL import Image

            with Image.open(path) as image:
                image.verify()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... on broken files
        return f"{IMAGE_UNREADABLE} ({type(e).__name__}: {e})"
    return None


def _image_size(record) -> Tuple[Optional[Tuple[int, int]], Optional[Problem]]:
    """((height, width), None) of ``record``, from its "height"/"width" or else from the image
    file's header; (None, problem) when neither gives positive integers."""
    h, w = record.get("height"), record.get("width")
    if h is None and w is None:
        try:
            from PIL import Image

            with Image.open(record["file_name"]) as image:
                w, h = image.size
        except Exception as e:  # noqa: BLE001 - any reason the header cannot be read
            return None, (IMAGE_UNREADABLE, f"{IMAGE_UNREADABLE} ({type(e).__name__}: {e})")
    if all(isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in (h, w)):
        return (int(h), int(w)), None
    return None, (IMAGE_SIZE, f"{IMAGE_SIZE} (height={h!r}, width={w!r})")


def _has_id(ann):
    return isinstance(ann, dict) and ann.get("id") is not None


def _ids_from_json(examples, json_file):
    """{position in ``examples``: annotation id} for the examples [(record, ann, index,
    problem)] whose annotations carry no id (detectron2's ``load_coco_json`` drops "id"), found
    in the COCO ``json_file``: the annotation of the same image with the same bbox (and the same
    segmentation, where several share the bbox). Reads the file once, only when a problem was
    found."""
    lookup = {i: ex for i, ex in enumerate(examples) if isinstance(ex[1], dict) and not _has_id(ex[1])}
    if not json_file or not lookup:
        return {}
    try:
        with open(json_file) as f:
            annotations = json.load(f).get("annotations", [])
    except (OSError, ValueError, AttributeError):
        return {}

    def key(image_id, ann):
        return image_id, json.dumps(ann.get("bbox"), default=str)

    wanted = {key(record.get("image_id"), ann) for record, ann, _, _ in lookup.values()}
    found = {}
    for a in annotations:
        if isinstance(a, dict) and key(a.get("image_id"), a) in wanted:
            found.setdefault(key(a.get("image_id"), a), []).append(a)
    ids = {}
    for i, (record, ann, _, _) in lookup.items():
        candidates = found.get(key(record.get("image_id"), ann), [])
        if len(candidates) > 1:
            candidates = [a for a in candidates if a.get("segmentation") == ann.get("segmentation")] or candidates
        if candidates:
            ids[i] = " or ".join(str(a.get("id")) for a in candidates)
    return ids


def _describe(examples, json_file):
    """One line per example (record, ann or None, index, problem): which image or annotation,
    and what is wrong with it."""
    ids = _ids_from_json(examples, json_file)
    lines = [f"(annotation ids from {json_file})"] if ids else []
    for i, (record, ann, index, (_, detail)) in enumerate(examples):
        image = f"image {record.get('file_name')} (image_id {record.get('image_id')})"
        if ann is None:
            lines.append(f"{image}: {detail}")
        elif _has_id(ann):
            lines.append(f"annotation id {ann['id']} of {image}: {detail}")
        elif i in ids:
            lines.append(f"annotation id {ids[i]} of {image}: {detail}")
        else:
            lines.append(f"annotation #{index} (no id in the record) of {image}: {detail}")
    return lines


def _summary(counter: Counter, total=None, what="annotations"):
    reasons = ", ".join(f"{k}: {v}" for k, v in counter.items())
    of = f" of {total}" if total is not None else ""
    return f"{sum(counter.values())}{of} {what} ({reasons})"


def sanitize_dataset_dicts(dicts: List[Dict], num_classes: int, name: str = "dataset", *,
                           for_evaluation: bool = False, json_file: Optional[str] = None) -> List[Dict]:
    """Returns the records of ``dicts`` (detectron2 dataset dicts) that training can use.

    Dropped, and counted in one warning that names the first ``NAMED_EXAMPLES`` (dataset, image
    file and image_id, annotation id): records whose image file is missing (or, with no
    "height"/"width", has no readable header) or whose height/width are not positive integers;
    annotations with a missing, non-numeric, non-finite, degenerate or far-away box (see
    ``MAX_IMAGE_SIZES_OUTSIDE``), a polygon with non-numeric, non-finite or far-away
    coordinates or fewer than 3 points or an odd number of coordinates, an RLE whose size is
    not the image's (height, width) or whose counts are malformed, an empty mask, or a category
    outside ``[0, num_classes)``. A record left with no annotation keeps its place
    (detectron2's ``FILTER_EMPTY_ANNOTATIONS`` decides about those). Uncompressed RLE (list
    counts) is converted to compressed RLE, which detectron2's mapper decodes.

    ``for_evaluation``: every record is kept (an evaluation over a subset of the images gives a
    wrong AP); a missing image, an image whose header PIL cannot read, or an annotation that
    would crash or corrupt the evaluation (all problems above but the degenerate box or polygon,
    the empty mask and the category) raises :class:`DatasetError` naming them.
    ``json_file``: the dataset's COCO file, read only to name the ids of bad annotations whose
    records do not carry them.
    """
    kept, skipped_records, skipped_anns, fatal = [], Counter(), Counter(), Counter()
    examples, fatal_examples = [], []
    for record in dicts:
        path = record.get("file_name", "")
        problem = None
        if not path or not os.path.isfile(path):
            problem = (IMAGE_MISSING, f"{IMAGE_MISSING}: {path!r}")
        elif for_evaluation:
            unreadable = image_problem(path, decode=False)
            problem = (IMAGE_UNREADABLE, unreadable) if unreadable else None
        size = None
        if not problem:
            size, problem = _image_size(record)
        if problem:
            (fatal if for_evaluation else skipped_records)[problem[0]] += 1
            (fatal_examples if for_evaluation else examples).append((record, None, None, problem))
            continue
        anns = []
        for index, ann in enumerate(record.get("annotations", [])):
            problem = _annotation_problem(ann, num_classes, *size)
            if problem is None:
                anns.append(_with_compressed_rle(ann))
                continue
            reason = CATEGORY.format(num_classes) if problem[0] == CATEGORY else problem[0]
            if for_evaluation and problem[0] not in _HARMLESS_IN_EVALUATION:
                fatal[reason] += 1
                fatal_examples.append((record, ann, index, problem))
            else:
                skipped_anns[reason] += 1
                examples.append((record, ann, index, problem))
        if "annotations" in record:
            record = {**record, "annotations": anns}
        kept.append(record)
    if fatal:
        named = "\n  ".join(_describe(fatal_examples[:NAMED_EXAMPLES], json_file))
        raise DatasetError(
            f"dataset {name!r} cannot be evaluated: {_summary(fatal, what='problems')}"
            f"{' (first ' + str(NAMED_EXAMPLES) + ')' if len(fatal_examples) > NAMED_EXAMPLES else ''}:\n  {named}\n"
            "Evaluating without them would give a wrong AP, and the evaluator reads the ground truth "
            "from the dataset itself: fix or remove these images and annotations in the dataset"
            + (f" ({json_file})" if json_file else ""))
    if skipped_records or skipped_anns:
        parts = []
        if skipped_records:
            parts.append(_summary(skipped_records, len(dicts), "images"))
        if skipped_anns:
            parts.append(_summary(skipped_anns))
        named = "; ".join(_describe(examples[:NAMED_EXAMPLES], json_file))
        first = "First skipped" if len(examples) > NAMED_EXAMPLES else "Skipped"
        logger.warning(f"{name}: skipped " + " and ".join(parts) + f". {first}: {named}")
    if not kept:
        raise DatasetError(f"{name}: no usable image left after skipping bad records")
    return kept


def load_checked_dataset_dicts(names: Sequence[str], num_classes: int, *,
                               for_evaluation: bool = False) -> List[Dict]:
    """Loads the registered datasets ``names`` and sanitizes their records
    (:func:`sanitize_dataset_dicts`, with ``for_evaluation``). A dataset whose annotation file
    cannot be read raises :class:`DatasetError` naming the dataset and the file."""
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
        out.extend(sanitize_dataset_dicts(dicts, num_classes, name, for_evaluation=for_evaluation,
                                          json_file=json_file))
    return out


class CheckedImageMapper:
    """Wraps a dataset mapper (e.g. detectron2's ``DatasetMapper``) so that an image file that
    exists but cannot be read as an image (not an image, truncated) is named instead of crashing
    the loader somewhere inside it.

    In training the record is skipped (the mapper returns None, and detectron2's ``MapDataset``
    takes another record instead and does not return to this one) with a warning that names the
    file and counts the images skipped so far in this process (each loader worker counts its
    own). In evaluation (``for_evaluation``) it raises :class:`DatasetError` naming the file.
    Whether a failure comes from the image is decided by reading the file again with
    detectron2's ``read_image`` after the mapper failed; any other error propagates unchanged.
    """

    def __init__(self, mapper, dataset_name: str = "dataset", for_evaluation: bool = False):
        self.mapper = mapper
        self.dataset_name = dataset_name
        self.for_evaluation = for_evaluation
        self.num_skipped = 0

    def __call__(self, record):
        try:
            return self.mapper(record)
        except Exception as e:
            path = record.get("file_name", "")
            problem = image_problem(path)
            if problem is None:
                raise
            if self.for_evaluation:
                raise DatasetError(
                    f"dataset {self.dataset_name!r}: the evaluation image {path} cannot be read: {problem}. "
                    "Evaluating without it would give a wrong AP: replace the file, or remove the image "
                    "and its annotations from the dataset") from e
            self.num_skipped += 1
            logger.warning(f"{self.dataset_name}: skipped the training image {path}: {problem} "
                           f"({self.num_skipped} unreadable image(s) skipped so far in this process)")
            return None
