"""Bad data: missing images, degenerate boxes and masks, unknown categories, and annotations
that would crash pycocotools or detectron2 (absurd, non-finite or non-numeric coordinates, RLE of
the wrong size or with malformed counts) are skipped in training with one counting warning that
names them, and training through tools/train_net.py runs; unreadable image files are skipped in
training and named in evaluation; evaluation datasets stop with an error naming what would make
the evaluation crash or wrong; a malformed annotation file stops with an error naming it."""
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("detectron2")
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets import register_coco_instances  # noqa: E402

from gn_detectron.data.sanitize import DatasetError, load_checked_dataset_dicts  # noqa: E402


def _write_coco(root, images, annotations, categories=((1, "a"), (2, "b"))):
    os.makedirs(root / "img", exist_ok=True)
    for img in images:
        if img.pop("_write", True):
            Image.fromarray(np.full((img["height"], img["width"], 3), 128, np.uint8)).save(root / "img" / img["file_name"])
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": i, "name": n} for i, n in categories]}
    path = root / "ann.json"
    path.write_text(json.dumps(data))
    return path


def _empty_rle(h, w):
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(np.zeros((h, w), np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _ann(i, image_id, cat=1, bbox=(2, 2, 10, 10), seg=None):
    x, y, w, h = bbox
    seg = seg if seg is not None else [[x, y, x + w, y, x + w, y + h, x, y + h]]
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": list(bbox), "area": w * h,
            "iscrowd": 0, "segmentation": seg}


@pytest.fixture
def registered():
    names = []

    def register(name, json_file, image_root):
        register_coco_instances(name, {}, str(json_file), str(image_root))
        names.append(name)
        return name

    yield register
    for n in names:
        DatasetCatalog.remove(n)
        MetadataCatalog.remove(n)


def test_bad_records_are_skipped_and_counted(tmp_path, registered, caplog):
    images = [{"id": k, "file_name": f"{k}.png", "height": 32, "width": 32} for k in range(1, 6)]
    images[4]["_write"] = False  # image 5's file is missing
    anns = [
        _ann(1, 1),
        _ann(2, 2, bbox=(4, 4, 0, 10)),                      # zero-width box
        _ann(3, 3, seg=[[1, 2, 3, 4]]),                      # polygon with two points
        _ann(4, 4, seg=_empty_rle(32, 32)),                 # RLE of an empty mask
        _ann(5, 1, bbox=(1, 1, float("nan"), 3)),            # non-finite box
        _ann(6, 5),
    ]
    path = _write_coco(tmp_path, images, anns)
    name = registered("bad_data_test", path, tmp_path / "img")
    with caplog.at_level(logging.WARNING):
        dicts = load_checked_dataset_dicts([name], num_classes=2)
    assert len(dicts) == 4  # the record without its image file is gone
    assert sum(len(d["annotations"]) for d in dicts) == 1
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "bad_data_test: skipped 1 of 5 images (image file missing: 1)" in msg
    assert "3 annotations" in msg and "degenerate box" in msg and "empty RLE mask" in msg
    assert "box not finite" in msg
    # detectron2's COCO loader drops the two-point polygon itself, with its own warning
    assert "Filtered out 1 instances without valid segmentation" in msg


def test_category_outside_the_model_classes(tmp_path, registered, caplog):
    images = [{"id": 1, "file_name": "1.png", "height": 32, "width": 32}]
    path = _write_coco(tmp_path, images, [_ann(1, 1, cat=1), _ann(2, 1, cat=2)])
    name = registered("bad_cat_test", path, tmp_path / "img")
    with caplog.at_level(logging.WARNING):
        dicts = load_checked_dataset_dicts([name], num_classes=1)  # model with one class
    assert [a["category_id"] for a in dicts[0]["annotations"]] == [0]
    assert "category outside the 1 classes: 1" in " ".join(r.getMessage() for r in caplog.records)


def test_category_id_not_in_the_json_categories_names_dataset_and_file(tmp_path, registered):
    images = [{"id": 1, "file_name": "1.png", "height": 32, "width": 32}]
    path = _write_coco(tmp_path, images, [_ann(1, 1, cat=7)])
    name = registered("bad_catid_test", path, tmp_path / "img")
    with pytest.raises(DatasetError, match=r"bad_catid_test.*ann\.json.*category_id=7"):
        load_checked_dataset_dicts([name], num_classes=2)


def test_malformed_json_names_the_file(tmp_path, registered):
    (tmp_path / "img").mkdir()
    path = tmp_path / "ann.json"
    path.write_text('{"images": [ {"id": 1,, }')
    name = registered("bad_json_test", path, tmp_path / "img")
    with pytest.raises(DatasetError, match=r"bad_json_test.*ann\.json is not valid JSON \(line 1"):
        load_checked_dataset_dicts([name], num_classes=2)


def test_nothing_usable_left(tmp_path, registered):
    images = [{"id": 1, "file_name": "1.png", "height": 32, "width": 32, "_write": False}]
    path = _write_coco(tmp_path, images, [_ann(1, 1)])
    name = registered("empty_left_test", path, tmp_path / "img")
    with pytest.raises(DatasetError, match="no usable image left"):
        load_checked_dataset_dicts([name], num_classes=2)


def test_box_modes(tmp_path, caplog):
    """Boxes are checked in their own BoxMode: an XYXY box with x1 < x0 is degenerate, a valid
    XYXY box is kept, and a relative or unknown mode is skipped with its value named."""
    from detectron2.structures import BoxMode

    from gn_detectron.data.sanitize import sanitize_dataset_dicts

    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    anns = [
        {"bbox": [1, 1, 5, 6], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0},  # kept
        {"bbox": [5, 1, 1, 6], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0},  # x1 < x0
        {"bbox": [0.1, 0.1, 0.5, 0.5], "bbox_mode": BoxMode.XYWH_REL, "category_id": 0},
        {"bbox": [1, 1, 2, 2], "bbox_mode": 9, "category_id": 0},
    ]
    with caplog.at_level(logging.WARNING):
        kept = sanitize_dataset_dicts([{"file_name": str(image), "annotations": anns}], 1, "boxes")
    assert kept[0]["annotations"] == anns[:1]
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "3 annotations" in msg and "degenerate box" in msg
    assert "bbox_mode 9" in msg and f"bbox_mode {BoxMode.XYWH_REL!r}" in msg


# ---------------------------------------------------------------------------------------------
# Annotations that crash pycocotools or detectron2's mapper
# ---------------------------------------------------------------------------------------------
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 64, 80
# Polygons that pass detectron2's own check (>= 6 coordinates, even length) and crash
# pycocotools.mask.frPyObjects (what detectron2's mapper calls with INPUT.MASK_FORMAT bitmask,
# and the COCO evaluation for segm): 1e30 overflows it (segfault), 1e10 makes it try to
# allocate memory in proportion to the perimeter (exhaustion; under a capped address space the
# failed allocation segfaults too).
SEGFAULT_POLYGON = [10, 10, 1e30, 10, 1e30, 1e30, 10, 40]
MEMORY_POLYGON = [10, 10, 1e10, 10, 1e10, 1e10, 10, 40]


def _run_python(code, address_space_gib=6, timeout=300):
    """Runs ``code`` in a fresh interpreter (a segfault cannot take pytest down) with the
    address space capped, so that a memory exhaustion fails fast instead of swapping the
    machine. Returns the CompletedProcess."""
    import resource
    import subprocess
    import sys

    def cap():
        limit = address_space_gib << 30
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=timeout, preexec_fn=cap)


def test_unchecked_polygons_crash_pycocotools():
    """The payloads are real: rasterizing these polygons as detectron2's ``polygons_to_bitmask``
    does (pycocotools frPyObjects, merge, decode; torch left out so that the address space can be
    capped at 2 GiB) kills the process with no Python error; coordinates at the edge of what the
    checks accept rasterize."""
    import signal

    from gn_detectron.data.sanitize import MAX_IMAGE_SIZES_OUTSIDE

    def rasterize(polygon):
        return _run_python(
            "from pycocotools import mask\n"
            f"rle = mask.merge(mask.frPyObjects([{polygon!r}], {H}, {W}))\n"
            "print('rasterized', mask.decode(rle).sum())", address_space_gib=2)

    for polygon in (SEGFAULT_POLYGON, MEMORY_POLYGON):
        out = rasterize(polygon)
        assert out.returncode == -signal.SIGSEGV, (polygon, out.returncode, out.stderr[-2000:])
        assert "rasterized" not in out.stdout
    k = MAX_IMAGE_SIZES_OUTSIDE
    edge = [-k * W, -k * H, (k + 1) * W, -k * H, (k + 1) * W, (k + 1) * H, -k * W, (k + 1) * H]
    out = rasterize(edge)
    assert out.returncode == 0 and f"rasterized {H * W}" in out.stdout, out.stderr[-2000:]


def _rle(mask):
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()}


def _square(h=H, w=W):
    mask = np.zeros((h, w), bool)
    mask[5:20, 5:25] = True
    return mask


# (annotation changes, the reason counted in the warning, a word of the named detail)
BAD_ANNOTATIONS = [
    ({"segmentation": [SEGFAULT_POLYGON]}, "polygon coordinate far outside the image", "1e+30"),
    ({"segmentation": [MEMORY_POLYGON]}, "polygon coordinate far outside the image", "1e+10"),
    ({"segmentation": [[10, 10, -500, 10, 50, 40]]}, "polygon coordinate far outside the image", "-500"),
    ({"segmentation": [[10, 10, float("inf"), 10, 50, 40]]}, "polygon coordinate not finite", "inf"),
    ({"segmentation": [[10, 10, "50", 10, 50, 40]]}, "polygon values not numbers", "'50'"),
    ({"segmentation": [[10, 10, None, 10, 50, 40]]}, "polygon values not numbers", "None"),
    ({"segmentation": [[[10, 10], [50, 10], [50, 40]]]}, "polygon values not numbers", "[[10, 10]"),
    ({"segmentation": [[10, 10, True, 10, 50, 40]]}, "polygon values not numbers", "True"),
    ({"segmentation": [[10, 10, 50, 10, 50, 40], [1, 2, 3, 4]]},
     "polygon with fewer than 3 points or an odd number of coordinates", "4 coordinates"),
    ({"segmentation": [[10, 10, 50, 10, 50, 40, 7]]},
     "polygon with fewer than 3 points or an odd number of coordinates", "7 coordinates"),
    ({"segmentation": []}, "empty or degenerate polygon mask", "empty list"),
    ({"segmentation": _rle(_square(32, 32))}, "RLE size does not match the image", "[32, 32]"),
    ({"segmentation": {"size": [H, W], "counts": "not RLE ~"}}, "malformed RLE mask", "compressed format"),
    ({"segmentation": {"size": [H, W], "counts": "0"}}, "malformed RLE mask", "sum to 0"),
    ({"segmentation": {"size": [H, W], "counts": [5, 10]}}, "malformed RLE mask", "sum to 15"),
    ({"segmentation": {"size": [H, W], "counts": [H * W + 5, -5]}}, "malformed RLE mask", "negative: 1"),
    ({"segmentation": {"size": [H, W], "counts": None}}, "malformed RLE mask", "NoneType"),
    ({"segmentation": {"size": ["64", W], "counts": "PP"}}, "malformed RLE mask", "['64', 80]"),
    ({"segmentation": {"counts": "PP"}}, "malformed RLE mask", "None"),
    ({"segmentation": np.ones((H, W + 1), bool)}, "bitmask size does not match the image", "(64, 81)"),
    ({"segmentation": "polygon"}, "unknown segmentation format", "str"),
    ({"bbox": ["2", 2, 10, 10]}, "box missing or not 4 numbers", "'2'"),
    ({"bbox": None}, "box missing or not 4 numbers", "None"),
    ({"bbox": 5}, "box missing or not 4 numbers", "5"),
    ({"bbox": [2, 2, [10], 10]}, "box missing or not 4 numbers", "[10]"),
    ({"bbox": [2, 2, 1e30, 10]}, "box far outside the image", "1e+30"),
    ({"bbox": [2, 2, float("-inf"), 10]}, "box not finite", "-inf"),
    ({"category_id": "0"}, "category outside the 2 classes", "'0'"),
]


def test_malformed_annotations_are_skipped_counted_and_named(tmp_path, caplog):
    from gn_detectron.data.sanitize import sanitize_dataset_dicts

    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(image)
    good = {"bbox": [2, 2, 10, 10], "bbox_mode": 1, "category_id": 0, "segmentation": [[2, 2, 12, 2, 12, 12]]}
    bad = [{**good, **change, "id": 100 + i} for i, (change, _, _) in enumerate(BAD_ANNOTATIONS)]
    # Kept: slightly outside the image, numpy values and arrays, every RLE form detectron2 reads.
    ok = [
        {**good, "id": 1, "segmentation": [[-3, -2, 12, -2, 82, 66]], "bbox": np.array([0.5, 1, 3, 4])},
        {**good, "id": 2, "segmentation": [np.array([2, 2, 12, 2, 12, 12], np.float32)]},
        {**good, "id": 3, "segmentation": _rle(_square())},
        {**good, "id": 4, "segmentation": {**_rle(_square()), "counts": _rle(_square())["counts"].encode()}},
        {**good, "id": 5, "segmentation": _square()},
    ]
    from pycocotools import mask as mask_util

    runs = [int(np.flatnonzero(_square().T.ravel())[0])]  # uncompressed RLE of a one-pixel-wide run
    uncompressed = {"size": [H, W], "counts": [runs[0], 15, H * W - runs[0] - 15]}
    ok.append({**good, "id": 6, "segmentation": uncompressed})
    records = [{"file_name": str(image), "image_id": 7, "height": H, "width": W, "annotations": ok + bad}]
    with caplog.at_level(logging.WARNING):
        kept = sanitize_dataset_dicts(records, num_classes=2, name="junk")
    kept_ids = [a["id"] for a in kept[0]["annotations"]]
    assert kept_ids == [1, 2, 3, 4, 5, 6]
    converted = kept[0]["annotations"][-1]["segmentation"]  # detectron2's mapper decodes only compressed RLE
    assert isinstance(converted["counts"], bytes) and mask_util.area(converted) == 15
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert f"junk: skipped {len(BAD_ANNOTATIONS)} annotations (" in msg
    for reason in {reason for _, reason, _ in BAD_ANNOTATIONS}:
        count = sum(r == reason for _, r, _ in BAD_ANNOTATIONS)
        assert f"{reason}: {count}" in msg, reason
    # The first few are named with dataset, image and annotation id and what is wrong.
    assert "First skipped: annotation id 100 of image " + str(image) + " (image_id 7): polygon coordinate 1e+30" in msg
    assert "annotation id 101 " in msg and "annotation id 105 " not in msg


@pytest.mark.parametrize("case", range(len(BAD_ANNOTATIONS)), ids=[r[1][:20] + ":" + r[2] for r in BAD_ANNOTATIONS])
def test_each_problem_is_named(tmp_path, caplog, case):
    from gn_detectron.data.sanitize import sanitize_dataset_dicts

    change, reason, word = BAD_ANNOTATIONS[case]
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(image)
    ann = {"bbox": [2, 2, 10, 10], "bbox_mode": 1, "category_id": 0, "id": 42, **change}
    with caplog.at_level(logging.WARNING):
        kept = sanitize_dataset_dicts([{"file_name": str(image), "height": H, "width": W, "annotations": [ann]}],
                                      2, "one")
    assert kept[0]["annotations"] == []
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert f"({reason}: 1)" in msg and "annotation id 42 " in msg and word in msg, msg


def test_image_size_read_from_the_file_when_the_record_has_none(tmp_path, caplog):
    from gn_detectron.data.sanitize import sanitize_dataset_dicts

    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(image)
    text = tmp_path / "b.png"
    text.write_text("not an image")
    inside = {"bbox": [2, 2, 10, 10], "bbox_mode": 1, "category_id": 0, "segmentation": [[2, 2, 5 * W, 2, 12, 12]]}
    outside = {**inside, "segmentation": [[2, 2, 5 * W + 1, 2, 12, 12]]}
    records = [{"file_name": str(image), "annotations": [inside, outside]},
               {"file_name": str(text), "annotations": [inside]},
               {"file_name": str(image), "height": "64", "width": W, "annotations": [inside]}]
    with caplog.at_level(logging.WARNING):
        kept = sanitize_dataset_dicts(records, 1, "sizes")
    assert len(kept) == 1 and kept[0]["annotations"] == [inside]
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "skipped 2 of 3 images (image file not readable: 1, image height/width not positive integers: 1)" in msg
    assert "cannot identify image file" in msg and "height='64'" in msg
    assert f"polygon coordinate {5 * W + 1} is more than 4 image sizes outside the 64x80 (HxW) image" in msg


def test_annotation_ids_named_from_the_json_file(tmp_path, registered, caplog):
    """detectron2's COCO loader drops annotation ids: the warning finds them in the file."""
    images = [{"id": k, "file_name": f"{k}.png", "height": H, "width": W} for k in (1, 2)]
    anns = [_ann(11, 1), _ann(12, 1, seg=[SEGFAULT_POLYGON]), _ann(13, 2, seg=[[1, 2, "x", 4, 5, 6]]),
            _ann(14, 2, bbox=(2, 2, 5, 5), seg=_rle(_square(32, 32)))]
    path = _write_coco(tmp_path, images, anns)
    name = registered("ids_test", path, tmp_path / "img")
    with caplog.at_level(logging.WARNING):
        dicts = load_checked_dataset_dicts([name], num_classes=2)
    assert [len(d["annotations"]) for d in dicts] == [1, 0]
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert f"annotation ids from {path}" in msg
    for ann_id, image_id in ((12, 1), (13, 2), (14, 2)):
        assert f"annotation id {ann_id} of image {tmp_path / 'img' / f'{image_id}.png'} (image_id {image_id})" in msg


# ---------------------------------------------------------------------------------------------
# Training through tools/train_net.py on such a dataset
# ---------------------------------------------------------------------------------------------
TRAIN_SCRIPT = """
import sys
sys.path.insert(0, {tools!r})
from detectron2.data.datasets import register_coco_instances
import train_net
if {unchecked!r}:  # what happened before the checks: the records go to the loader as they are
    import gn_detectron.data.sanitize as sanitize
    sanitize.sanitize_dataset_dicts = lambda dicts, *args, **kwargs: dicts
register_coco_instances("bad_train", {{}}, {json_file!r}, {image_root!r})
train_net.main(train_net.parse_args([
    "DATASETS.TRAIN", "('bad_train',)", "DATASETS.TEST", "()", "MODEL.ROI_HEADS.NUM_CLASSES", "1",
    "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "80",
    "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.CONV_DIM", "32", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()",
    "SOLVER.MAX_ITER", "{iters}", "SOLVER.CHECKPOINT_PERIOD", "1000", "OUTPUT_DIR", {out!r}]))
print("TRAINING FINISHED")
"""


def _bad_training_set(root, bad_anns, bad_files=None):
    """A COCO set of 6 images of H x W with one good square each (ids 1-6) and ``bad_anns``
    [(image_id, segmentation)] as annotations 91, 92, ...; ``bad_files`` {file_name: bytes} as
    extra images 7, 8, ... with good annotations."""
    images, anns = [], []
    for k in range(1, 7):
        images.append({"id": k, "file_name": f"{k}.png", "height": H, "width": W})
        anns.append(_ann(k, k, bbox=(10, 10, 40, 30)))
    for i, (image_id, seg) in enumerate(bad_anns):
        anns.append(_ann(91 + i, image_id, bbox=(10, 10, 40, 30), seg=seg))
    for i, file_name in enumerate(bad_files or {}):
        images.append({"id": 7 + i, "file_name": file_name, "height": H, "width": W, "_write": False})
        anns.append(_ann(20 + i, 7 + i, bbox=(10, 10, 40, 30)))
    path = _write_coco(root, images, anns, categories=((1, "a"),))
    for file_name, data in (bad_files or {}).items():
        (root / "img" / file_name).write_bytes(data)
    return path


def _train(root, json_file, unchecked=False, iters=3):
    code = TRAIN_SCRIPT.format(tools=os.path.join(ROOT, "tools"), unchecked=unchecked, json_file=str(json_file),
                               image_root=str(root / "img"), out=str(root / "out"), iters=iters)
    return _run_python(code)


def _truncated(fmt):
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3), np.uint8)).save(buffer, fmt)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


@pytest.mark.slow
def test_unchecked_polygon_kills_training(tmp_path):
    """Without the checks, the 1e30 polygon reaches pycocotools in the data loader and the
    training process dies of a segfault: no Python error, no message."""
    import signal

    path = _bad_training_set(tmp_path, [(k, [SEGFAULT_POLYGON]) for k in range(1, 7)])
    out = _train(tmp_path, path, unchecked=True)
    assert out.returncode == -signal.SIGSEGV, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Starting training" in out.stdout + out.stderr and "TRAINING FINISHED" not in out.stdout


@pytest.mark.slow
def test_training_skips_and_names_crashing_annotations_and_unreadable_images(tmp_path):
    """The same kind of dataset, now with every crashing annotation kind and three files that are
    not readable images: training runs to the end; one warning counts and names the annotations
    (dataset, image, annotation id), and each unreadable image is named when it is read."""
    bad = [(1, [SEGFAULT_POLYGON]), (2, [MEMORY_POLYGON]), (3, [[10, 10, "50", 10, 50, 40, 10, 40]]),
           (4, _rle(_square(32, 32)))]
    files = {"text.png": b"this is not an image\n", "cut.jpg": _truncated("JPEG"), "cut.png": _truncated("PNG")}
    path = _bad_training_set(tmp_path, bad, files)
    out = _train(tmp_path, path, iters=5)  # 10 samples: every image of the 9 is drawn
    assert out.returncode == 0 and "TRAINING FINISHED" in out.stdout, out.stdout[-3000:] + out.stderr[-5000:]
    log = out.stdout + out.stderr
    assert ("bad_train: skipped 4 annotations (polygon coordinate far outside the image: 2, "
            "polygon values not numbers: 1, RLE size does not match the image: 1)") in log
    img = tmp_path / "img"
    for ann_id, image_id, detail in ((91, 1, "polygon coordinate 1e+30"), (92, 2, "polygon coordinate 1e+10"),
                                     (93, 3, "polygon [10, 10, '50'"), (94, 4, "RLE size [32, 32]")):
        assert f"annotation id {ann_id} of image {img / f'{image_id}.png'} (image_id {image_id}): {detail}" in log
    assert f"skipped the training image {img / 'text.png'}: image file not readable (UnidentifiedImageError" in log
    assert f"skipped the training image {img / 'cut.jpg'}: image file not readable (OSError: image file is truncated" in log
    assert f"skipped the training image {img / 'cut.png'}: image file not readable (OSError" in log
    assert "3 unreadable image(s) skipped so far in this process" in log
    assert os.path.isfile(tmp_path / "out" / "model_final.pth")


# ---------------------------------------------------------------------------------------------
# Loaders: unreadable images skipped in training, named in evaluation
# ---------------------------------------------------------------------------------------------
def _loader_cfg():
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (H,), W
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = H, W
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 3
    return cfg


def test_train_loader_skips_unreadable_images(tmp_path, registered, caplog):
    from gn_detectron.engine.trainer import GNTrainer

    files = {"text.png": b"this is not an image\n", "cut.jpg": _truncated("JPEG"), "cut.png": _truncated("PNG")}
    path = _bad_training_set(tmp_path, [], files)
    cfg = _loader_cfg()
    cfg.DATASETS.TRAIN = (registered("unreadable_train", path, tmp_path / "img"),)
    with caplog.at_level(logging.WARNING):
        loader = iter(GNTrainer.build_train_loader(cfg))
        seen = [record["file_name"] for _ in range(6) for record in next(loader)]  # two epochs of 9
    assert len(seen) == 18 and {os.path.basename(f) for f in seen} == {f"{k}.png" for k in range(1, 7)}
    msg = " ".join(r.getMessage() for r in caplog.records)
    for name in files:
        assert f"unreadable_train: skipped the training image {tmp_path / 'img' / name}: image file not readable" in msg
    assert "3 unreadable image(s) skipped so far" in msg


def _val_set(tmp_path, registered, name, change=None):
    images = [{"id": k, "file_name": f"{k}.png", "height": H, "width": W} for k in (1, 2, 3)]
    anns = [_ann(10 + k, k, bbox=(10, 10, 40, 30)) for k in (1, 2, 3)]
    if change:
        change(images, anns)
    path = _write_coco(tmp_path, images, anns, categories=((1, "a"),))
    return registered(name, path, tmp_path / "img"), path


def test_test_loader_evaluates_every_image(tmp_path, registered, caplog):
    from gn_detectron.engine.trainer import GNTrainer

    def degenerate(images, anns):  # harmless for the evaluation: reported, not fatal
        anns[0]["bbox"] = [10, 10, 0, 5]

    name, _ = _val_set(tmp_path, registered, "val_ok", degenerate)
    with caplog.at_level(logging.WARNING):
        inputs = [x for batch in GNTrainer.build_test_loader(_loader_cfg(), name) for x in batch]
    assert sorted(x["image_id"] for x in inputs) == [1, 2, 3]
    assert "val_ok: skipped 1 annotations (degenerate box (zero or negative size): 1)" in caplog.text


def _missing(images, anns):
    images[1]["_write"] = False


def _text_bytes(images, anns):
    images[1]["_write"] = False
    images[1]["file_name"] = "text.png"


def _crashing_polygon(images, anns):
    anns[1]["segmentation"] = [SEGFAULT_POLYGON]


@pytest.mark.parametrize("change, message", [
    (_missing, r"cannot be evaluated: 1 problems \(image file missing: 1\):\n  image .*img/2\.png \(image_id 2\)"),
    (_text_bytes, r"image .*img/text\.png \(image_id 2\): image file not readable \(UnidentifiedImageError"),
    (_crashing_polygon, r"annotation id 12 of image .*img/2\.png \(image_id 2\): polygon coordinate 1e\+30"),
], ids=["missing image", "not an image", "crashing polygon"])
def test_test_loader_names_what_would_make_evaluation_wrong(tmp_path, registered, change, message):
    """Found when the loader is built, before any inference."""
    from gn_detectron.engine.trainer import GNTrainer

    name, path = _val_set(tmp_path, registered, "val_bad", change)
    if change is _text_bytes:
        (tmp_path / "img" / "text.png").write_text("not an image")
    with pytest.raises(DatasetError, match=message) as error:
        GNTrainer.build_test_loader(_loader_cfg(), name)
    assert "val_bad" in str(error.value) and "wrong AP" in str(error.value) and str(path) in str(error.value)


def test_test_loader_names_a_truncated_image_when_it_reads_it(tmp_path, registered):
    """A truncated JPEG passes the header check; reading it raises an error naming it."""
    from gn_detectron.engine.trainer import GNTrainer

    name, _ = _val_set(tmp_path, registered, "val_cut")
    (tmp_path / "img" / "2.png").write_bytes(_truncated("JPEG"))  # PIL reads by content, not name
    loader = GNTrainer.build_test_loader(_loader_cfg(), name)
    with pytest.raises(DatasetError, match=r"val_cut': the evaluation image .*img/2\.png cannot be read: "
                                           r"image file not readable \(OSError: image file is truncated"):
        list(loader)


def test_test_loader_names_a_truncated_json(tmp_path, registered):
    from gn_detectron.engine.trainer import GNTrainer

    name, path = _val_set(tmp_path, registered, "val_json")
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(DatasetError, match=r"dataset 'val_json': the annotation file .*ann\.json is not valid JSON"):
        GNTrainer.build_test_loader(_loader_cfg(), name)


def test_evaluation_datasets_are_checked_before_training(tmp_path, registered):
    """A broken validation set stops the run when the train loader is built, not after training."""
    from gn_detectron.engine.trainer import GNTrainer

    train = _bad_training_set(tmp_path / "train", [])
    name, path = _val_set(tmp_path / "val", registered, "val_broken")
    path.write_text(path.read_text()[:100])
    cfg = _loader_cfg()
    cfg.DATASETS.TRAIN = (registered("train_fine", train, tmp_path / "train" / "img"),)
    cfg.DATASETS.TEST = (name,)
    with pytest.raises(DatasetError, match=r"dataset 'val_broken': the annotation file .*val/ann\.json is not valid"):
        GNTrainer.build_train_loader(cfg)
