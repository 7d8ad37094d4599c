"""A synthetic instance-segmentation dataset of coloured shapes, in COCO format.

Images of 1 to 4 flat-coloured shapes (circles, rectangles, triangles, ellipses, stars,
hexagons) of varied sizes on a textured background, with exact instance masks: the dataset is
generated on first use (no download), the same seed always gives the same bytes, and Mask R-CNN
learns it on a CPU in minutes.

Every shape's colour is random but contrasts in brightness with what it covers (dark on light,
light on dark), and at most 40% of a shape is hidden by later ones: a network trained from
scratch learns brightness edges far sooner than edges between arbitrary colours, and a shape
mostly hidden no longer shows what it is (see the README's account of the demo).

Layout under ``root``::

    <split>/000000.png ...                  RGB uint8 images
    annotations/instances_<split>.json      COCO instances, masks as compressed RLE
    .complete_<split>                       the generation parameters (JSON), written last
"""
import contextlib
import errno
import functools
import glob
import json
import logging
import math
import numbers
import os
import re
import shutil
import tempfile
import zlib

import cv2
import numpy as np
from pycocotools import mask as mask_util
from tqdm import tqdm

__all__ = [
    "SHAPES_CATEGORIES",
    "default_shapes_root",
    "shapes_dataset_paths",
    "render_shapes_image",
    "mask_to_rle",
    "mask_to_bbox",
    "generate_shapes_dataset",
    "register_shapes_dataset",
    "register_shapes_datasets",
]

logger = logging.getLogger(__name__)

# Category names; a dataset's category ids are their positions + 1.
SHAPES_CATEGORIES = ("circle", "rectangle", "triangle", "ellipse", "star", "hexagon")

# Bumped whenever the generator's output changes, so that older caches are regenerated.
FORMAT_VERSION = 2

MIN_IMAGE_SIDE = 32
MAX_INSTANCES_PER_IMAGE = 4
# Shape diameters range from 1/8 to 1/2 of the shorter image side (at least MIN_SHAPE_DIAMETER).
MIN_SHAPE_DIAMETER = 14.0
# An instance stays visible on at least this fraction of its own area, and this many pixels.
MIN_VISIBLE_FRACTION = 0.6
# Shape colours: every channel below DARK_MAX on a light ground, above LIGHT_MIN on a dark one.
DARK_MAX = 100.0
LIGHT_MIN = 155.0
MIN_VISIBLE_PIXELS = 30
PLACEMENT_TRIES = 20

_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------
def _pixel(point):
    return int(round(point[0])), int(round(point[1]))


def _polygon_on_circle(center, radii, angle):
    """(N, 2) float64 vertices (x, y) at angles ``angle + 2*pi*k/N`` and distances ``radii``
    (N,) from ``center``."""
    radii = np.asarray(radii, dtype=np.float64)
    angles = angle + 2 * np.pi * np.arange(len(radii)) / len(radii)
    return np.stack([center[0] + radii * np.cos(angles), center[1] + radii * np.sin(angles)], axis=1)


def _fill_polygon(canvas, vertices):
    cv2.fillPoly(canvas, [np.round(vertices).astype(np.int32)], 1, lineType=cv2.LINE_8)


def _draw_circle(canvas, center, radius, angle, rng):
    cv2.circle(canvas, _pixel(center), int(round(radius)), 1, thickness=-1, lineType=cv2.LINE_8)


def _draw_rectangle(canvas, center, radius, angle, rng):
    # Corners on the circumscribed circle; the short side is 0.4 to 1 times the long one.
    half_diagonal_angle = math.atan(rng.uniform(0.4, 1.0))
    angles = angle + np.array([half_diagonal_angle, np.pi - half_diagonal_angle,
                               np.pi + half_diagonal_angle, -half_diagonal_angle])
    vertices = np.stack([center[0] + radius * np.cos(angles), center[1] + radius * np.sin(angles)], axis=1)
    _fill_polygon(canvas, vertices)


def _draw_triangle(canvas, center, radius, angle, rng):
    _fill_polygon(canvas, _polygon_on_circle(center, [radius] * 3, angle))


def _draw_ellipse(canvas, center, radius, angle, rng):
    minor = radius * rng.uniform(0.35, 0.65)
    axes = (int(round(radius)), max(1, int(round(minor))))
    cv2.ellipse(canvas, _pixel(center), axes, math.degrees(angle), 0, 360, 1,
                thickness=-1, lineType=cv2.LINE_8)


def _draw_star(canvas, center, radius, angle, rng):
    inner = radius * rng.uniform(0.4, 0.55)
    _fill_polygon(canvas, _polygon_on_circle(center, [radius, inner] * 5, angle))


def _draw_hexagon(canvas, center, radius, angle, rng):
    _fill_polygon(canvas, _polygon_on_circle(center, [radius] * 6, angle))


# name -> function(canvas (H, W) uint8, center (x, y), radius, angle in radians, rng) that sets
# to 1 the pixels of a shape inscribed in the circle of ``radius`` around ``center``.
_SHAPE_DRAWERS = {
    "circle": _draw_circle,
    "rectangle": _draw_rectangle,
    "triangle": _draw_triangle,
    "ellipse": _draw_ellipse,
    "star": _draw_star,
    "hexagon": _draw_hexagon,
}
assert tuple(_SHAPE_DRAWERS) == SHAPES_CATEGORIES


def _random_shape_mask(rng, shape_name, height, width):
    """(H, W) bool mask of a randomly placed, sized and rotated shape, entirely in the image."""
    shorter_side = min(height, width)
    diameter = rng.uniform(max(shorter_side / 8, MIN_SHAPE_DIAMETER), shorter_side / 2)
    radius = diameter / 2
    center = (rng.uniform(radius, width - 1 - radius), rng.uniform(radius, height - 1 - radius))
    angle = rng.uniform(0, 2 * np.pi)
    canvas = np.zeros((height, width), dtype=np.uint8)
    _SHAPE_DRAWERS[shape_name](canvas, center, radius, angle, rng)
    return canvas.astype(bool)


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------
def _random_background(rng, height, width):
    """(H, W, 3) float32 RGB: a linear gradient between two random colours in a random direction,
    plus smooth colour blobs and pixel noise."""
    start, end = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    direction = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    position = xs * np.float32(math.cos(direction)) + ys * np.float32(math.sin(direction))
    position = (position - position.min()) / max(float(position.max() - position.min()), 1.0)
    background = start + position[..., None] * (end - start)

    blob_grid = rng.normal(0, 30, size=(height // 48 + 2, width // 48 + 2, 3)).astype(np.float32)
    background += cv2.resize(blob_grid, (width, height), interpolation=cv2.INTER_CUBIC)
    background += rng.standard_normal((height, width, 3), dtype=np.float32) * np.float32(10)
    return background


def _contrasting_colour(rng, image, mask, covered_colours, min_distance=60.0, tries=10):
    """(3,) float32 random RGB colour for a shape over ``mask`` ((H, W) bool) in ``image``
    (H, W, 3): every channel in [0, DARK_MAX] where what lies under the mask is light on average
    (mean > 127.5), in [LIGHT_MIN, 255] where it is dark, so that the outline is a brightness
    edge in all three channels. Of ``tries`` draws, the first at least ``min_distance`` away from
    each of ``covered_colours`` (the colours of the earlier shapes it overlaps), else the last."""
    light_ground = float(image[mask].mean()) > 127.5
    low, high = (0.0, DARK_MAX) if light_ground else (LIGHT_MIN, 255.0)
    for _ in range(tries):
        colour = rng.uniform(low, high, size=3).astype(np.float32)
        if all(np.linalg.norm(colour - other) >= min_distance for other in covered_colours):
            break
    return colour


def _keeps_earlier_instances_visible(new_mask, instances):
    """Whether every instance of ``instances`` stays visible enough once ``new_mask`` covers it."""
    for instance in instances:
        remaining = np.count_nonzero(instance["mask"] & ~new_mask)
        if remaining < MIN_VISIBLE_PIXELS or remaining < MIN_VISIBLE_FRACTION * instance["full_area"]:
            return False
    return True


def _place_shape(rng, num_categories, shape_names, instances, height, width):
    """Draws shapes until one is large enough and leaves the earlier ``instances`` visible enough.
    Returns (category index, (H, W) bool mask), or None after ``PLACEMENT_TRIES`` draws."""
    for _ in range(PLACEMENT_TRIES):
        category = int(rng.integers(num_categories))
        mask = _random_shape_mask(rng, shape_names[category], height, width)
        if np.count_nonzero(mask) >= MIN_VISIBLE_PIXELS and _keeps_earlier_instances_visible(mask, instances):
            return category, mask
    return None


def render_shapes_image(rng, height, width, shape_names=SHAPES_CATEGORIES):
    """Renders one image of 1 to ``MAX_INSTANCES_PER_IMAGE`` shapes.

    Shapes are painted one after the other, each over the earlier ones: the earlier instances'
    masks lose the pixels it covers. A shape that would leave an earlier one less than
    ``MIN_VISIBLE_FRACTION`` of its area (or fewer than ``MIN_VISIBLE_PIXELS`` pixels) is drawn
    again elsewhere, so that every shape seen in the image is annotated.

    Args:
        rng (np.random.Generator): the only source of randomness.
        height, width (int): image size.
        shape_names (sequence[str]): the categories, names of ``SHAPES_CATEGORIES``.

    Returns:
        image: (H, W, 3) uint8 RGB.
        instances: list of dicts with "category" (int, index into ``shape_names``), "mask"
            ((H, W) bool, the visible pixels; the masks of an image are disjoint) and
            "full_area" (int, the pixel count of the shape before later shapes covered it) and
            "colour" ((3,) float32 RGB).
    """
    image = _random_background(rng, height, width)
    instances = []
    for _ in range(int(rng.integers(1, MAX_INSTANCES_PER_IMAGE + 1))):
        placed = _place_shape(rng, len(shape_names), shape_names, instances, height, width)
        if placed is None:
            continue
        category, mask = placed
        covered = [instance["colour"] for instance in instances if (instance["mask"] & mask).any()]
        colour = _contrasting_colour(rng, image, mask, covered)
        image[mask] = colour
        for instance in instances:
            instance["mask"] &= ~mask
        instances.append({"category": category, "mask": mask, "full_area": int(np.count_nonzero(mask)),
                          "colour": colour})
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(4)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image, instances


# ---------------------------------------------------------------------------------------------
# COCO annotations
# ---------------------------------------------------------------------------------------------
def mask_to_bbox(mask):
    """Tight box [x, y, width, height] (ints, XYWH_ABS) of the True pixels of a non-empty
    (H, W) bool mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    x0, y0 = int(cols[0]), int(rows[0])
    return [x0, y0, int(cols[-1]) - x0 + 1, int(rows[-1]) - y0 + 1]


def mask_to_rle(mask):
    """COCO compressed RLE {"size": [H, W], "counts": str} of an (H, W) bool mask."""
    rle = mask_util.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _instance_annotation(annotation_id, image_id, category_id, mask):
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": mask_to_rle(mask),
        "area": int(np.count_nonzero(mask)),
        "bbox": mask_to_bbox(mask),
        "iscrowd": 0,
    }


def _coco_categories(shape_names):
    return [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(shape_names)]


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------
def default_shapes_root():
    """The default folder of the shapes dataset: ``$GN_DETECTRON_DATASETS`` if set, else
    ``~/.cache/gn_detectron/shapes``."""
    return os.environ.get("GN_DETECTRON_DATASETS") or os.path.expanduser("~/.cache/gn_detectron/shapes")


def shapes_dataset_paths(root, split):
    """(json_file, image_root) of ``split`` under ``root``."""
    root = os.fspath(root)
    return os.path.join(root, "annotations", f"instances_{split}.json"), os.path.join(root, split)


def _marker_path(root, split):
    return os.path.join(root, f".complete_{split}")


def _write_image(path, image):
    """Writes an (H, W, 3) uint8 RGB image as PNG."""
    if not cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1]):
        raise OSError(f"Could not write {path}")


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))


@contextlib.contextmanager
def _split_lock(root, split):
    """Holds an exclusive lock on ``split`` under ``root`` (POSIX), so that processes that start
    together (e.g. the ranks of a distributed run) generate a split once. Where the lock file
    cannot be created or locked (a read-only folder, a file system without locks) it goes on
    without the lock, with a warning."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    path = os.path.join(root, f".lock_{split}")
    lock_file = None
    try:
        lock_file = open(path, "a")
        fcntl.flock(lock_file, fcntl.LOCK_EX)
    except OSError as e:
        if lock_file is not None:
            lock_file.close()
        logger.warning(f"Cannot lock {path} ({e}): going on without the lock; processes that start "
                       "together may generate this split at the same time")
        yield
        return
    with lock_file:
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _is_complete(root, split, params):
    """Whether ``split`` under ``root`` was fully generated with ``params``."""
    json_file, image_root = shapes_dataset_paths(root, split)
    try:
        with open(_marker_path(root, split)) as f:
            written = json.load(f)
    except (OSError, ValueError):
        return False
    return written == params and os.path.isfile(json_file) and os.path.isdir(image_root)


def _write_split(folder, params):
    """Writes the images of a split into ``folder/<split>/`` and its COCO json into
    ``folder/instances_<split>.json``."""
    split = params["split"]
    height, width = params["image_size"]
    shape_names = params["categories"]
    image_dir = os.path.join(folder, split)
    os.makedirs(image_dir)
    images, annotations = [], []
    split_key = zlib.crc32(split.encode("utf-8"))
    for index in tqdm(range(params["num_images"]), desc=f"Generating shapes '{split}'", unit="image"):
        rng = np.random.default_rng([params["seed"], split_key, index])
        image, instances = render_shapes_image(rng, height, width, shape_names)
        file_name = f"{index:06d}.png"
        _write_image(os.path.join(image_dir, file_name), image)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for instance in instances:
            annotations.append(_instance_annotation(
                len(annotations) + 1, image_id, instance["category"] + 1, instance["mask"]))
    dataset = {
        "info": {"description": "gn_detectron synthetic shapes", "version": str(FORMAT_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": _coco_categories(shape_names),
    }
    _write_json(os.path.join(folder, f"instances_{split}.json"), dataset)


def _install_split(folder, root, split):
    """Moves a split written by :func:`_write_split` into ``folder`` to its place under ``root``
    (``folder`` must be on the same file system); the previous data of ``split`` goes to
    ``folder``."""
    json_file, image_root = shapes_dataset_paths(root, split)
    os.makedirs(os.path.dirname(json_file), exist_ok=True)
    if os.path.lexists(image_root):
        os.replace(image_root, os.path.join(folder, "previous"))
    os.replace(os.path.join(folder, split), image_root)
    os.replace(os.path.join(folder, f"instances_{split}.json"), json_file)


def _write_marker(folder, root, split, params):
    path = os.path.join(folder, "marker")
    with open(path, "w") as f:
        json.dump(params, f, indent=1, sort_keys=True)
    os.replace(path, _marker_path(root, split))


def _remove_leftovers(root, split):
    """Removes the marker of ``split`` and the temporary folders of interrupted generations."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(_marker_path(root, split))
    for folder in glob.glob(os.path.join(glob.escape(root), f".tmp_{split}.*")):
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------
def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _generation_params(split, num_images, image_size, seed, categories):
    """The parameters of a generation as a JSON-able dict; raises ValueError on bad arguments."""
    if not isinstance(split, str) or not _SPLIT_NAME.match(split):
        raise ValueError(f"split must be a non-empty name of letters, digits, '_' or '-', got {split!r}")
    if not _is_int(num_images) or num_images < 1:
        raise ValueError(f"num_images must be an integer >= 1, got {num_images!r}")
    if (not isinstance(image_size, (tuple, list)) or len(image_size) != 2
            or not all(_is_int(s) and s >= MIN_IMAGE_SIDE for s in image_size)):
        raise ValueError(f"image_size must be (height, width), integers >= {MIN_IMAGE_SIDE}, got {image_size!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    categories = [categories] if isinstance(categories, str) else list(categories)
    unknown = [c for c in categories if c not in SHAPES_CATEGORIES]
    if not categories or unknown or len(set(categories)) != len(categories):
        raise ValueError(f"categories must be distinct names among {SHAPES_CATEGORIES}, got {categories!r}")
    return {
        "format_version": FORMAT_VERSION,
        "split": split,
        "num_images": int(num_images),
        "image_size": [int(image_size[0]), int(image_size[1])],
        "seed": int(seed),
        "categories": categories,
    }


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------
def generate_shapes_dataset(root, split, num_images, image_size=(192, 256), seed=0,
                            categories=SHAPES_CATEGORIES, overwrite=False):
    """Generates ``split`` of the shapes dataset under ``root``, unless it is there already.

    Writes ``root/<split>/NNNNNN.png`` ((H, W, 3) uint8 RGB images) and
    ``root/annotations/instances_<split>.json`` (COCO instances: "bbox" XYWH tight around the
    mask, "area" the mask's pixel count, "segmentation" compressed RLE with str counts,
    "iscrowd" 0; category ids 1..K in the order of ``categories``). Image ``i`` depends only on
    (``seed``, ``split``, ``i``): the same arguments give byte-identical files.

    The split is written to a temporary folder in ``root`` and moved into place at the end;
    ``root/.complete_<split>``, written last, holds the parameters. Data whose marker is missing
    or holds other parameters is generated again; an interrupted generation leaves no marker.
Complete data is used without writing anything (not even the lock file), so a generated dataset
on a read-only mount works; where data must be generated and the folder cannot be written, the
error names the folder and says what to set.

    Args:
        root (str or PathLike): the dataset folder (created if missing).
        split (str): e.g. "train"; letters, digits, "_" and "-".
        num_images (int): >= 1.
        image_size (tuple[int, int]): (height, width), both >= ``MIN_IMAGE_SIDE``.
        seed (int): >= 0.
        categories (sequence[str]): distinct names of ``SHAPES_CATEGORIES``.
        overwrite (bool): generate even if matching data is there.

    Returns:
        (json_file, image_root): the paths of the annotations and of the image folder.
    """
    params = _generation_params(split, num_images, image_size, seed, categories)
    root = os.fspath(root)
    if not overwrite and _is_complete(root, split, params):
        # Complete data is only read: no lock, nothing written, so a read-only copy works.
        return shapes_dataset_paths(root, split)
    try:
        os.makedirs(root, exist_ok=True)
        with _split_lock(root, split):
            if overwrite or not _is_complete(root, split, params):
                _remove_leftovers(root, split)
                folder = tempfile.mkdtemp(prefix=f".tmp_{split}.", dir=root)
                try:
                    _write_split(folder, params)
                    _install_split(folder, root, split)
                    _write_marker(folder, root, split, params)
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
    except OSError as e:
        if not (isinstance(e, PermissionError) or e.errno == errno.EROFS):
            raise
        # OSError(errno, ...) builds the same subclass (PermissionError for EACCES/EPERM).
        raise OSError(e.errno, f"Cannot write the shapes dataset split {split!r} under {root} "
                      f"({e.strerror}), and its data there is missing or was generated with other "
                      "parameters. Set GN_DETECTRON_DATASETS (or root) to a writable folder, or generate "
                      "the split once where it can be written", e.filename) from e
    return shapes_dataset_paths(root, split)


def _load_shapes_dicts(name, root, split, num_images, image_size, seed, categories):
    """Detectron2 dataset dicts of a shapes split, generated first if needed."""
    from detectron2.data.datasets import load_coco_json

    json_file, image_root = generate_shapes_dataset(root, split, num_images, image_size, seed, categories)
    return load_coco_json(json_file, image_root, name)


def register_shapes_dataset(name, root, split, num_images, image_size=(192, 256), seed=0,
                            categories=SHAPES_CATEGORIES):
    """Registers ``split`` of the shapes dataset under ``root`` as ``name`` in detectron2's
    ``DatasetCatalog`` and ``MetadataCatalog``, like ``register_coco_instances``: records with
    RLE "segmentation" (train with ``INPUT.MASK_FORMAT = "bitmask"``) and ``BoxMode.XYWH_ABS``
    boxes; metadata ``json_file``, ``image_root``, ``evaluator_type="coco"``, ``thing_classes``.

    The data is generated on the first ``DatasetCatalog.get(name)`` (see
    :func:`generate_shapes_dataset` for the arguments). ``COCOEvaluator`` reads ``json_file``
    when built: load the dataset first (``DefaultTrainer.test`` builds the loader first). A name
    already registered is left as it is.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    params = _generation_params(split, num_images, image_size, seed, categories)
    root = os.path.abspath(os.fspath(root))
    json_file, image_root = shapes_dataset_paths(root, split)
    if name in DatasetCatalog.list():
        registered = MetadataCatalog.get(name).get("json_file")
        if registered != json_file:
            logger.warning(f"Dataset {name!r} is already registered (json_file={registered}), kept as it is")
        return
    shape_names = params["categories"]
    DatasetCatalog.register(name, functools.partial(
        _load_shapes_dicts, name, root, split, params["num_images"], tuple(params["image_size"]),
        params["seed"], tuple(shape_names)))
    MetadataCatalog.get(name).set(
        json_file=json_file,
        image_root=image_root,
        evaluator_type="coco",
        thing_classes=list(shape_names),
        thing_dataset_id_to_contiguous_id={i + 1: i for i in range(len(shape_names))},
    )


# Registered variants: name -> (split folder, images, categories). "tiny" ones are for tests
# and smoke runs; "a" (four categories) and "b" (the other two) are for fine-tuning from one to
# the other, with a different number of classes.
SHAPES_VARIANTS = {
    "shapes_train_tiny": ("train_tiny", 48, SHAPES_CATEGORIES),
    "shapes_val_tiny": ("val_tiny", 8, SHAPES_CATEGORIES),
    "shapes_a_train": ("a_train", 200, SHAPES_CATEGORIES[:4]),
    "shapes_a_val": ("a_val", 50, SHAPES_CATEGORIES[:4]),
    "shapes_b_train": ("b_train", 200, SHAPES_CATEGORIES[4:]),
    "shapes_b_val": ("b_val", 50, SHAPES_CATEGORIES[4:]),
}


def register_shapes_datasets(root=None, num_train=600, num_val=100, image_size=(192, 256), seed=0):
    """Registers "shapes_train" and "shapes_val" (see :func:`register_shapes_dataset`), both
    generated on first use under ``root`` (default :func:`default_shapes_root`), with the six
    ``SHAPES_CATEGORIES``; and the variants of ``SHAPES_VARIANTS`` (tiny sets for smoke runs,
    and two category subsets for fine-tuning). The defaults suit Mask R-CNN training on a
    CPU in minutes. Names already registered are left as they are, so calling it again is
    harmless; nothing is generated until a dataset is used.

    Returns:
        list[str]: the registered names.
    """
    root = default_shapes_root() if root is None else root
    names = []
    for split, num_images in (("train", num_train), ("val", num_val)):
        name = f"shapes_{split}"
        register_shapes_dataset(name, root, split, num_images, image_size, seed)
        names.append(name)
    for name, (split, num_images, categories) in SHAPES_VARIANTS.items():
        register_shapes_dataset(name, root, split, num_images, image_size, seed, categories)
        names.append(name)
    return names
