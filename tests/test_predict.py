"""tools/predict.py: files, folders (recursive) and globs in; a picture per image and
predictions.json (COCO results with the dataset's category ids) out; unreadable files named,
skipped and counted. A tiny model with random weights stands in for a trained one."""
import json
import os
import subprocess
import sys

import cv2
import pytest
import torch

pytest.importorskip("detectron2")
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

from _coco_data import CATEGORIES, make_dataset  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREDICT = os.path.join(ROOT, "tools", "predict.py")
CONFIG = os.path.join(ROOT, "configs", "shapes", "mask_rcnn_gn.yaml")
sys.path.insert(0, os.path.join(ROOT, "tools"))
import predict  # noqa: E402

TINY = ["INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128", "MODEL.FPN.OUT_CHANNELS", "64",
        "MODEL.ROI_BOX_HEAD.CONV_DIM", "64", "MODEL.ROI_MASK_HEAD.CONV_DIM", "64", "MODEL.ROI_BOX_HEAD.FC_DIM", "128",
        "MODEL.ROI_HEADS.NUM_CLASSES", "2"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Images in nested folders (with a broken file), the dataset's json registered by
    DATASETS.COCO_JSON, and random weights of the tiny model."""
    root = tmp_path_factory.mktemp("predict")
    data = make_dataset(str(root / "data"))
    photos = root / "photos"
    (photos / "sub").mkdir(parents=True)
    images = sorted(os.listdir(data["images"]))[:3]
    for i, name in enumerate(images):
        target = photos / ("sub" if i == 2 else "") / name
        target.write_bytes(open(os.path.join(data["images"], name), "rb").read())
    (photos / "broken.jpg").write_text("not an image")
    (photos / "notes.txt").write_text("not an image and not named like one: ignored in folders")
    opts = TINY + ["DATASETS.COCO_JSON", json.dumps([["mine_predict_val", data["val"], data["images"]]]),
                   "DATASETS.TRAIN", "()", "DATASETS.TEST", "('mine_predict_val',)"]
    cfg = predict.load_cfg(CONFIG, opts, 0.0)
    from gn_detectron.modeling import build_model

    weights = root / "random.pth"
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    yield {"root": root, "photos": photos, "data": data, "opts": opts + ["MODEL.WEIGHTS", str(weights)],
           "extra": os.path.join(data["images"], sorted(os.listdir(data["images"]))[5])}
    DatasetCatalog.remove("mine_predict_val")
    MetadataCatalog.remove("mine_predict_val")


def test_expand_inputs(setup, tmp_path):
    photos = setup["photos"]
    files = predict.expand_inputs([str(photos), str(photos / "*.jpg"), setup["extra"]])
    names = [os.path.relpath(f, photos) for f in files]
    # the folder (recursive, image extensions only, sorted), the glob's new matches, the file
    assert names[:4] == ["broken.jpg", "train_000.jpg", "train_001.jpg", os.path.join("sub", "train_002.jpg")]
    assert len(files) == 5 and files[4] == setup["extra"]  # the glob's matches were there already
    assert len(predict.expand_inputs([str(photos / "**" / "*.jpg")])) == 4  # "**" is recursive
    with pytest.raises(FileNotFoundError, match=r"--input '.*nowhere\*\.png': no such file or folder"):
        predict.expand_inputs([str(photos), str(tmp_path / "nowhere*.png")])


@pytest.mark.slow
def test_predict_pictures_and_coco_results(setup, tmp_path, device):
    opts = setup["opts"] + ["MODEL.DEVICE", device]
    cfg = predict.load_cfg(CONFIG, opts, 0.0)
    files = predict.expand_inputs([str(setup["photos"])])
    results, skipped = predict.predict(cfg, files, str(tmp_path))
    assert [p for p, _ in skipped] == [str(setup["photos"] / "broken.jpg")]
    assert sorted(os.listdir(tmp_path)) == ["predictions.json", "train_000.png", "train_001.png", "train_002.png"]
    picture = cv2.imread(str(tmp_path / "train_002.png"))
    assert picture.shape == (96, 128, 3)
    on_disk = json.loads((tmp_path / "predictions.json").read_text())
    assert on_disk == results and results  # random weights and threshold 0: detections
    readable = [f for f in files if not f.endswith("broken.jpg")]
    assert {r["image_id"] for r in results} <= {1, 2, 3}
    for r in results:
        assert r["file_name"] == readable[r["image_id"] - 1]
        assert r["category_id"] in {c["id"] for c in CATEGORIES}  # the dataset's ids, 7 and 42
        x, y, w, h = r["bbox"]
        assert w >= 0 and h >= 0 and 0 <= x <= 128 and 0 <= y <= 96
        assert 0 <= r["score"] <= 1
        assert r["segmentation"]["size"] == [96, 128] and isinstance(r["segmentation"]["counts"], str)

    # a threshold keeps the detections that score at least that much
    cfg = predict.load_cfg(CONFIG, opts, 0.4)
    kept, _ = predict.predict(cfg, readable[:1], str(tmp_path / "t"))
    assert all(r["score"] >= 0.4 for r in kept)
    assert len(kept) == sum(r["score"] >= 0.4 for r in results if r["image_id"] == 1)


@pytest.mark.slow
def test_command_line(setup, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, PREDICT, "--config-file", CONFIG, "--input", str(setup["photos"] / "sub"),
           str(setup["photos"] / "broken.jpg"), str(setup["photos"] / "train_00*.jpg"), "--output", str(out),
           "--confidence-threshold", "0.0"] + setup["opts"]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                         env={**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert f"skipped {setup['photos'] / 'broken.jpg'}: not a readable image" in run.stdout + run.stderr
    assert "3 images," in run.stdout
    assert f"skipped 1 files that are not readable images: {setup['photos'] / 'broken.jpg'}" in run.stdout
    assert "Predicting: 100%" in run.stderr  # the progress bar
    assert sorted(os.listdir(out)) == ["predictions.json", "train_000.png", "train_001.png", "train_002.png"]


def test_missing_input_stops_before_loading_anything(setup, tmp_path):
    args = ["--input", str(setup["photos"]), str(tmp_path / "nothing_here"), "--output", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=r"--input '.*nothing_here': no such file or folder, and no file matches it"):
        predict.main(args + setup["opts"])
    assert not (tmp_path / "out").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="no image files found"):
        predict.main(["--input", str(empty), "--output", str(tmp_path / "out")])
