"""Bad training data: missing images, degenerate boxes and masks and unknown categories are
skipped with one counting warning; a malformed annotation file stops with an error naming it;
training on such a dataset runs."""
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
