"""Datasets in COCO's json format, registered from the config (``DATASETS.COCO_JSON``), and the
checks of a training set against the config that must pass before anything is built.

``DATASETS.COCO_JSON`` is a list of ``[name, json_file, image_root]`` entries; each is registered
with detectron2's ``register_coco_instances`` semantics (``load_coco_json``): any category ids
(mapped to contiguous ids 0..K-1 in the order of the ids, the map kept in the metadata as
``thing_dataset_id_to_contiguous_id``), polygons and RLE masks, crowd annotations, images without
annotations. The category names are put into the metadata (``thing_classes``) at registration,
so evaluation tables and pictures name the classes without loading the dataset first.
"""
import functools
import json
import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

__all__ = [
    "CocoJsonSummary",
    "read_coco_json_summary",
    "register_coco_json",
    "register_coco_json_datasets",
    "check_training_datasets",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CocoJsonSummary:
    """What the checks need from a COCO json file, without loading the dataset.

    Attributes:
        categories: the "categories" entries, sorted by id (the order of the contiguous ids).
        num_images: length of "images".
        num_rle_masks: non-crowd annotations whose "segmentation" is RLE (a dict); those need
            ``INPUT.MASK_FORMAT = "bitmask"`` to train (crowd annotations are not trained on:
            detectron2's mapper drops them before reading masks).
        has_annotations: whether the file has an "annotations" list (test sets may not).
    """

    categories: Tuple[dict, ...]
    num_images: int
    num_rle_masks: int
    has_annotations: bool

    @property
    def thing_classes(self) -> List[str]:
        return [c["name"] for c in self.categories]

    @property
    def dataset_id_to_contiguous_id(self) -> dict:
        return {c["id"]: i for i, c in enumerate(self.categories)}


# names registered by register_coco_json in this process
_REGISTERED = set()


class CocoJsonError(ValueError):
    """A DATASETS.COCO_JSON entry or its files cannot be used."""


def _summarize(data, json_file) -> CocoJsonSummary:
    if not isinstance(data, dict):
        raise CocoJsonError(f"{json_file}: a COCO json file holds an object with 'images', "
                            f"'annotations' and 'categories'; this one holds a {type(data).__name__}")
    missing = [key for key in ("images", "categories") if not isinstance(data.get(key), list)]
    if missing:
        raise CocoJsonError(f"{json_file}: no {' and no '.join(repr(k) for k in missing)} list; "
                            "a COCO instances file needs 'images', 'annotations' and 'categories'")
    categories = data["categories"]
    bad = [c for c in categories if not (isinstance(c, dict) and isinstance(c.get("id"), int)
                                         and isinstance(c.get("name"), str))]
    if bad:
        raise CocoJsonError(f"{json_file}: every category needs an integer 'id' and a string 'name'; "
                            f"got {bad[0]!r}")
    if not categories:
        raise CocoJsonError(f"{json_file}: 'categories' is empty")
    ids = [c["id"] for c in categories]
    if len(set(ids)) != len(ids):
        raise CocoJsonError(f"{json_file}: category ids repeat: {sorted(ids)}")
    annotations = data.get("annotations")
    if annotations is not None and not (isinstance(annotations, list)
                                        and all(isinstance(a, dict) for a in annotations)):
        raise CocoJsonError(f"{json_file}: 'annotations' is not a list of objects")
    num_rle = sum(isinstance(a.get("segmentation"), dict) and not a.get("iscrowd", 0) for a in annotations or ())
    return CocoJsonSummary(
        categories=tuple(sorted(categories, key=lambda c: c["id"])),
        num_images=len(data["images"]),
        num_rle_masks=num_rle,
        has_annotations=isinstance(annotations, list),
    )


@functools.lru_cache(maxsize=32)
def _read_summary(path, mtime_ns, size):
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise CocoJsonError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    return _summarize(data, path)


def read_coco_json_summary(json_file) -> CocoJsonSummary:
    """Reads the categories of the COCO json file ``json_file`` and counts its images and RLE
    masks (:class:`CocoJsonSummary`). The file is parsed once per process while it is unchanged
    (cached by path, modification time and size)."""
    path = os.path.abspath(os.fspath(json_file))
    st = os.stat(path)
    return _read_summary(path, st.st_mtime_ns, st.st_size)


def _entry_fields(entry, index) -> Tuple[str, str, str]:
    if (not isinstance(entry, (list, tuple)) or len(entry) != 3
            or not all(isinstance(x, str) and x for x in entry)):
        raise CocoJsonError(
            f"DATASETS.COCO_JSON[{index}] is {entry!r}; each entry is [name, json_file, image_root], "
            'three non-empty strings, e.g. DATASETS.COCO_JSON \'[["mine_train", "ann/train.json", "images/"]]\'')
    return entry[0], entry[1], entry[2]


def register_coco_json(name, json_file, image_root) -> CocoJsonSummary:
    """Registers the COCO json dataset ``json_file`` (images under ``image_root``) as ``name``
    in detectron2's ``DatasetCatalog`` and ``MetadataCatalog``, as ``register_coco_instances``
    does, with the category names and id map in the metadata at once.

    Relative paths are taken relative to the current directory and stored absolute. A name that
    is already registered with the same files is left as it is; with other files, or as another
    kind of dataset, it is an error (pick another name).

    Raises:
        CocoJsonError: the file or folder is missing, the json is not valid or not COCO
            instances, or the name is taken.

    Returns:
        CocoJsonSummary: the categories and counts of the file.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    json_path, image_dir = os.path.abspath(json_file), os.path.abspath(image_root)
    if not os.path.isfile(json_path):
        raise CocoJsonError(f"dataset {name!r}: annotation file {json_file!r} not found "
                            f"(looked for {json_path}; relative paths start from {os.getcwd()})")
    if not os.path.isdir(image_dir):
        raise CocoJsonError(f"dataset {name!r}: image folder {image_root!r} not found "
                            f"(looked for {image_dir}; relative paths start from {os.getcwd()})")
    try:
        summary = read_coco_json_summary(json_path)
    except CocoJsonError as e:
        raise CocoJsonError(f"dataset {name!r}: {e}") from e
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if meta.get("json_file") == json_path and meta.get("image_root") == image_dir:
            return summary
        raise CocoJsonError(
            f"dataset {name!r} is already registered (json_file={meta.get('json_file')}, "
            f"image_root={meta.get('image_root')}): give the DATASETS.COCO_JSON entry of "
            f"{json_file} another name")
    _REGISTERED.add(name)
    register_coco_instances(name, {
        "thing_classes": summary.thing_classes,
        "thing_dataset_id_to_contiguous_id": summary.dataset_id_to_contiguous_id,
    }, json_path, image_dir)
    logger.info(f"Registered dataset {name!r}: {summary.num_images} images, "
                f"{len(summary.categories)} categories ({', '.join(summary.thing_classes)}) from {json_path}")
    return summary


def register_coco_json_datasets(cfg_or_entries) -> List[str]:
    """Registers every ``[name, json_file, image_root]`` entry of ``cfg.DATASETS.COCO_JSON`` (or
    of a list of such entries) with :func:`register_coco_json`; calling it again is harmless.

    Example::

        cfg.DATASETS.COCO_JSON = [["mine_train", "ann/train.json", "images/"],
                                  ["mine_val", "ann/val.json", "images/"]]
        register_coco_json_datasets(cfg)
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("mine_train",), ("mine_val",)

    Returns:
        list[str]: the registered names.
    """
    entries = cfg_or_entries
    if hasattr(cfg_or_entries, "DATASETS"):
        entries = cfg_or_entries.DATASETS.get("COCO_JSON", [])
    if isinstance(entries, str) or not isinstance(entries, (list, tuple)):
        raise CocoJsonError(f"DATASETS.COCO_JSON is {entries!r}; it is a list of [name, json_file, "
                            "image_root] entries")
    fields = [_entry_fields(entry, i) for i, entry in enumerate(entries)]
    names = [f[0] for f in fields]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise CocoJsonError(f"DATASETS.COCO_JSON names {repeated} more than once; give each entry its own name")
    for name, json_file, image_root in fields:
        register_coco_json(name, json_file, image_root)
    return names


def _model_num_classes(cfg) -> Tuple[str, int]:
    """(config key, value) of the model's number of classes."""
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        return "MODEL.RETINANET.NUM_CLASSES", cfg.MODEL.RETINANET.NUM_CLASSES
    return "MODEL.ROI_HEADS.NUM_CLASSES", cfg.MODEL.ROI_HEADS.NUM_CLASSES


def _training_set_classes(name) -> Tuple[Optional[List[str]], Optional[CocoJsonSummary]]:
    """(class names, or None when unknown without loading; summary of its json file, or None).

    The json file is read only when it was read at registration (DATASETS.COCO_JSON, cached) or
    when the metadata has no class names: a large built-in dataset is not parsed twice."""
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(name)
    json_file = meta.get("json_file", None)
    classes = meta.get("thing_classes", None)
    summary = None
    if json_file and os.path.isfile(json_file) and (name in _REGISTERED or classes is None):
        try:
            summary = read_coco_json_summary(json_file)
        except (CocoJsonError, OSError):
            summary = None  # the loader reports a broken file with its own error
    if classes is None and summary is not None:
        classes = summary.thing_classes
    return (list(classes) if classes is not None else None), summary


def check_training_datasets(cfg) -> None:
    """Checks the config against its training sets (``DATASETS.TRAIN``) before anything is built.

    - The number of classes of the model (``MODEL.ROI_HEADS.NUM_CLASSES``, or
      ``MODEL.RETINANET.NUM_CLASSES`` for RetinaNet) must equal each training set's category
      count. This compares the config with the data; fine-tuning from a checkpoint with another
      class count is unaffected (its class-dependent layers are re-initialised).
    - A training set with RLE masks needs ``INPUT.MASK_FORMAT = "bitmask"`` when
      ``MODEL.MASK_ON`` (detectron2's "polygon" format cannot hold RLE; "bitmask" reads
      polygons too).

    A dataset whose categories cannot be known without loading it (no ``thing_classes`` in its
    metadata and no readable ``json_file``) is not checked; the RLE check applies to the
    datasets of ``DATASETS.COCO_JSON`` and to those without ``thing_classes``.

    Raises:
        ValueError: naming the dataset, both numbers, and what to change.
    """
    key, num_classes = _model_num_classes(cfg)
    for name in cfg.DATASETS.TRAIN:
        classes, summary = _training_set_classes(name)
        if classes is None:
            logger.debug(f"{name}: categories unknown before loading; {key} not checked")
        elif len(classes) != num_classes:
            shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
            raise ValueError(
                f"{key} is {num_classes}, but the training set {name!r} has {len(classes)} "
                f"categories ({shown}): set {key} {len(classes)}. (Fine-tuning from a checkpoint "
                "trained with another number of classes works: its class-dependent layers are "
                "re-initialised.)")
        if (cfg.MODEL.MASK_ON and cfg.INPUT.MASK_FORMAT == "polygon" and summary is not None
                and summary.num_rle_masks):
            raise ValueError(
                f"The training set {name!r} has {summary.num_rle_masks} masks in RLE format, which "
                "INPUT.MASK_FORMAT 'polygon' cannot hold: set INPUT.MASK_FORMAT bitmask (it reads "
                "polygons as well)")
