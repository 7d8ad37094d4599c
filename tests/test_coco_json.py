"""COCO-format datasets by config (DATASETS.COCO_JSON): registration with detectron2's
register_coco_instances semantics, the start-up checks (missing files, NUM_CLASSES, RLE with the
polygon mask format), and a dataset of one's own trained and evaluated through
tools/train_net.py with config overrides alone."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("detectron2")
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

from _coco_data import CATEGORIES, make_dataset  # noqa: E402
from gn_detectron.config import add_gn_config  # noqa: E402
from gn_detectron.data import check_training_datasets, register_coco_json_datasets  # noqa: E402
from gn_detectron.data.coco_json import CocoJsonError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
CONFIG = os.path.join(ROOT, "configs", "shapes", "mask_rcnn_gn.yaml")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(str(tmp_path_factory.mktemp("mine")))


@pytest.fixture
def registered():
    """Removes the datasets a test registers."""
    names = []
    yield names
    for n in names:
        if n in DatasetCatalog.list():
            DatasetCatalog.remove(n)
        MetadataCatalog.remove(n)


def _cfg(entries, **overrides):
    cfg = add_gn_config(get_cfg())
    cfg.merge_from_file(CONFIG)
    cfg.DATASETS.COCO_JSON = entries
    for key, value in overrides.items():
        node, *path = key.split(".")
        target = cfg[node]
        for p in path[:-1]:
            target = target[p]
        target[path[-1]] = value
    return cfg


def test_registration_follows_register_coco_instances(dataset, registered):
    cfg = _cfg([["mine_reg_train", dataset["train"], dataset["images"]]])
    registered.extend(register_coco_json_datasets(cfg))
    meta = MetadataCatalog.get("mine_reg_train")
    # categories sorted by id, names in the metadata before anything is loaded
    assert meta.thing_classes == ["circle", "rectangle"]
    assert meta.thing_dataset_id_to_contiguous_id == {7: 0, 42: 1}
    assert meta.evaluator_type == "coco" and meta.json_file == os.path.abspath(dataset["train"])

    dicts = DatasetCatalog.get("mine_reg_train")
    with open(dataset["train"]) as f:
        raw = json.load(f)
    assert len(dicts) == len(raw["images"]) == 10
    assert [d["image_id"] for d in dicts] == sorted(i["id"] for i in raw["images"])
    assert dicts[-1]["annotations"] == []  # the image without annotations is kept
    anns = [a for d in dicts for a in d["annotations"]]
    assert len(anns) == len(raw["annotations"])
    assert {a["category_id"] for a in anns} == {0, 1}
    by_raw_id = {(a["category_id"], a["bbox"][0], a["bbox"][1]) for a in raw["annotations"]}
    reverse = {0: 7, 1: 42}
    assert {(reverse[a["category_id"]], a["bbox"][0], a["bbox"][1]) for a in anns} == by_raw_id
    assert any(isinstance(a["segmentation"], list) for a in anns)   # polygons
    assert any(isinstance(a["segmentation"], dict) for a in anns)   # RLE
    assert sum(a["iscrowd"] for a in anns) == 1                      # the crowd annotation
    assert all(os.path.isfile(d["file_name"]) for d in dicts)

    # registering the same entries again is harmless
    assert register_coco_json_datasets(cfg) == ["mine_reg_train"]


def test_relative_paths_from_the_current_directory(dataset, registered, monkeypatch):
    root = os.path.dirname(dataset["images"])
    monkeypatch.chdir(root)
    registered.extend(register_coco_json_datasets([["mine_rel", "annotations/val.json", "images"]]))
    assert MetadataCatalog.get("mine_rel").image_root == dataset["images"]
    assert len(DatasetCatalog.get("mine_rel")) == 4


@pytest.mark.parametrize("entry, message", [
    (["m", "nowhere/train.json", "IMAGES"], r"dataset 'm': annotation file 'nowhere/train\.json' not found"),
    (["m", "TRAIN", "no_images_here/"], r"dataset 'm': image folder 'no_images_here/' not found"),
    (["m", "TRAIN"], r"DATASETS.COCO_JSON\[0\] is \['m', '.*'\]; each entry is \[name, json_file, image_root\]"),
    ("m", r"each entry is \[name, json_file, image_root\]"),
])
def test_bad_entries_are_named(dataset, entry, message):
    if isinstance(entry, list):
        entry = [dataset["train"] if x == "TRAIN" else dataset["images"] if x == "IMAGES" else x for x in entry]
    with pytest.raises(CocoJsonError, match=message):
        register_coco_json_datasets([entry])


def test_not_a_coco_file_and_name_clashes(dataset, tmp_path, registered):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": []')
    with pytest.raises(CocoJsonError, match=r"dataset 'bad': .*bad\.json is not valid JSON \(line 1"):
        register_coco_json_datasets([["bad", str(bad), dataset["images"]]])
    bad.write_text('{"images": [], "annotations": []}')
    with pytest.raises(CocoJsonError, match=r"no 'categories' list"):
        register_coco_json_datasets([["bad", str(bad), dataset["images"]]])
    with pytest.raises(CocoJsonError, match=r"names \['twice'\] more than once"):
        register_coco_json_datasets([["twice", dataset["train"], dataset["images"]]] * 2)
    # a name taken by another dataset (here a built-in one) is refused, not overwritten
    from gn_detectron.data import register_shapes_datasets

    register_shapes_datasets()
    with pytest.raises(CocoJsonError, match=r"dataset 'shapes_val' is already registered .* another name"):
        register_coco_json_datasets([["shapes_val", dataset["train"], dataset["images"]]])


def test_num_classes_must_match_the_training_set(dataset, registered):
    entries = [["mine_chk_train", dataset["train"], dataset["images"]]]
    registered.extend(register_coco_json_datasets(entries))
    cfg = _cfg(entries, **{"DATASETS.TRAIN": ("mine_chk_train",)})  # the shapes config: 6 classes
    with pytest.raises(ValueError, match=r"MODEL.ROI_HEADS.NUM_CLASSES is 6, but the training set "
                                         r"'mine_chk_train' has 2 categories \(circle, rectangle\): "
                                         r"set MODEL.ROI_HEADS.NUM_CLASSES 2"):
        check_training_datasets(cfg)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    check_training_datasets(cfg)  # passes

    cfg.INPUT.MASK_FORMAT = "polygon"
    with pytest.raises(ValueError, match=r"'mine_chk_train' has \d+ masks in RLE format.*"
                                         r"set INPUT.MASK_FORMAT bitmask"):
        check_training_datasets(cfg)
    cfg.MODEL.MASK_ON = False  # boxes only: the masks are not read
    check_training_datasets(cfg)


def test_crowd_rle_is_fine_with_polygon_masks(tmp_path, dataset, registered):
    """As in COCO itself: crowd annotations in RLE, the others polygons, trained with the
    polygon format (detectron2 drops crowd annotations before reading masks)."""
    with open(dataset["val"]) as f:
        data = json.load(f)
    for a in data["annotations"]:
        if isinstance(a["segmentation"], dict) and not a["iscrowd"]:
            x, y, w, h = a["bbox"]
            a["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    assert any(a["iscrowd"] and isinstance(a["segmentation"], dict) for a in data["annotations"])
    path = tmp_path / "polygons.json"
    path.write_text(json.dumps(data))
    entries = [["mine_poly_train", str(path), dataset["images"]]]
    registered.extend(register_coco_json_datasets(entries))
    cfg = _cfg(entries, **{"DATASETS.TRAIN": ("mine_poly_train",), "MODEL.ROI_HEADS.NUM_CLASSES": 2,
                           "INPUT.MASK_FORMAT": "polygon"})
    check_training_datasets(cfg)


def test_num_classes_of_python_registered_and_builtin_datasets(dataset, registered):
    from detectron2.data.datasets import register_coco_instances

    register_coco_instances("mine_py_train", {}, dataset["train"], dataset["images"])
    registered.append("mine_py_train")
    cfg = _cfg([], **{"DATASETS.TRAIN": ("mine_py_train",)})
    with pytest.raises(ValueError, match="has 2 categories"):  # read from its json_file
        check_training_datasets(cfg)
    from gn_detectron.data import register_shapes_datasets

    register_shapes_datasets()
    cfg = _cfg([], **{"DATASETS.TRAIN": ("shapes_a_train",)})  # four shape classes, not generated yet
    with pytest.raises(ValueError, match=r"NUM_CLASSES is 6, but the training set 'shapes_a_train' has 4"):
        check_training_datasets(cfg)


def test_config_keys_from_yaml_and_command_line(dataset, tmp_path):
    cfg = add_gn_config(get_cfg())
    assert cfg.DATASETS.COCO_JSON == [] and cfg.TEST.COCO_EVAL_BACKEND == "faster_coco_eval"
    cfg.merge_from_list(["DATASETS.COCO_JSON", '[["a", "x.json", "img/"], ["b", "y.json", "img/"]]',
                         "TEST.COCO_EVAL_BACKEND", "pycocotools"])
    assert cfg.DATASETS.COCO_JSON == [["a", "x.json", "img/"], ["b", "y.json", "img/"]]
    assert cfg.TEST.COCO_EVAL_BACKEND == "pycocotools"
    yaml = tmp_path / "c.yaml"
    yaml.write_text(f"_BASE_: {CONFIG}\nDATASETS:\n  COCO_JSON: [[mine, {dataset['train']}, {dataset['images']}]]\n")
    cfg = add_gn_config(get_cfg())
    cfg.merge_from_file(str(yaml))
    assert cfg.DATASETS.COCO_JSON == [["mine", dataset["train"], dataset["images"]]]


# A tiny run: small images, a narrow FPN, a few iterations.
TINY = [
    "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
    "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.ROI_BOX_HEAD.CONV_DIM", "64",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "64", "MODEL.ROI_BOX_HEAD.FC_DIM", "128",
    "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()", "SOLVER.OPTIMIZER", "SGD", "SOLVER.BASE_LR", "0.01",
]


def _run(args, cwd, timeout=600):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable] + args, capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


def _own_data_args(dataset):
    root = os.path.dirname(dataset["images"])
    entries = json.dumps([["mine_train", os.path.relpath(dataset["train"], root), "images/"],
                          ["mine_val", os.path.relpath(dataset["val"], root), "images"]])
    return root, ["DATASETS.COCO_JSON", entries, "DATASETS.TRAIN", "('mine_train',)",
                  "DATASETS.TEST", "('mine_val',)"]


@pytest.mark.slow
def test_own_dataset_trains_and_evaluates_through_train_net(dataset, tmp_path):
    """The done-when run: relative paths from the data folder, config overrides only."""
    root, data_args = _own_data_args(dataset)
    out = tmp_path / "run"
    run = _run([TRAIN_NET, "--config-file", CONFIG] + data_args + TINY +
               ["MODEL.ROI_HEADS.NUM_CLASSES", "2", "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", str(out)], cwd=root)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-6000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"bbox", "segm"}
    for task in ("bbox", "segm"):  # the category names reach the evaluation tables
        assert {"AP", "AP50", "AP-circle", "AP-rectangle"} <= set(results[task])
    assert "Evaluating" in log and "with faster_coco_eval" in log
    # the predictions file of the evaluator holds the dataset's own category ids
    dets = json.loads((out / "inference" / "mine_val" / "coco_instances_results.json").read_text())
    assert dets and {d["category_id"] for d in dets} <= {c["id"] for c in CATEGORIES}


@pytest.mark.slow
def test_num_classes_mismatch_fails_before_building(dataset, tmp_path):
    root, data_args = _own_data_args(dataset)
    run = _run([TRAIN_NET, "--config-file", CONFIG] + data_args + TINY +
               ["SOLVER.MAX_ITER", "1", "OUTPUT_DIR", str(tmp_path)], cwd=root)
    assert run.returncode != 0
    err = run.stderr
    assert ("ValueError: MODEL.ROI_HEADS.NUM_CLASSES is 6, but the training set 'mine_train' has 2 "
            "categories (circle, rectangle): set MODEL.ROI_HEADS.NUM_CLASSES 2") in err
    assert "Model:" not in run.stdout + err  # nothing was built
