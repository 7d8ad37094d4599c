"""The built-in shapes dataset: deterministic COCO files, exact masks, atomic generation,
detectron2 registration and COCO evaluation."""
import json
import os
from collections import defaultdict

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

pytest.importorskip("detectron2")
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.evaluation import COCOEvaluator  # noqa: E402
from detectron2.structures import Boxes, BoxMode, Instances  # noqa: E402

from gn_detectron.data import SHAPES_CATEGORIES, generate_shapes_dataset, register_shapes_dataset  # noqa: E402
from gn_detectron.data import register_shapes_datasets, shapes  # noqa: E402

NUM_IMAGES = 8
IMAGE_SIZE = (64, 80)


def generate(root, split="train", seed=0, **kwargs):
    kwargs.setdefault("num_images", NUM_IMAGES)
    kwargs.setdefault("image_size", IMAGE_SIZE)
    return generate_shapes_dataset(root, split, seed=seed, **kwargs)


def read_files(root):
    """{relative path: bytes} of every file under ``root``."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


def load_json(json_file):
    with open(json_file) as f:
        return json.load(f)


def masks_by_image(dataset):
    """{image_id: [(annotation, (H, W) uint8 mask)]}."""
    masks = defaultdict(list)
    for ann in dataset["annotations"]:
        masks[ann["image_id"]].append((ann, mask_util.decode(ann["segmentation"])))
    return masks


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate(root, num_images=24)
    return root


@pytest.fixture(scope="module")
def dataset(dataset_root):
    return load_json(os.path.join(dataset_root, "annotations", "instances_train.json"))


def test_layout(dataset_root, dataset):
    assert sorted(os.listdir(os.path.join(dataset_root, "train"))) == [f"{i:06d}.png" for i in range(24)]
    assert os.path.isfile(os.path.join(dataset_root, ".complete_train"))
    assert not [n for n in os.listdir(dataset_root) if n.startswith(".tmp")]
    for image in dataset["images"]:
        assert (image["height"], image["width"]) == IMAGE_SIZE
        with Image.open(os.path.join(dataset_root, "train", image["file_name"])) as pil:
            assert pil.mode == "RGB" and pil.size == IMAGE_SIZE[::-1]
            assert np.asarray(pil).dtype == np.uint8


def test_same_seed_gives_identical_files(tmp_path):
    generate(tmp_path / "a", seed=3)
    generate(tmp_path / "b", seed=3)
    files_a, files_b = read_files(tmp_path / "a"), read_files(tmp_path / "b")
    assert any(p.endswith(".png") for p in files_a) and any(p.endswith(".json") for p in files_a)
    assert files_a == files_b


def test_different_seed_or_split_gives_other_images(tmp_path):
    generate(tmp_path / "a", seed=0)
    generate(tmp_path / "b", seed=1)
    generate(tmp_path / "a", split="val", seed=0)
    image = "000000.png"
    train_a = read_files(tmp_path / "a" / "train")
    assert train_a[image] != read_files(tmp_path / "b" / "train")[image]
    assert train_a[image] != read_files(tmp_path / "a" / "val")[image]


def test_annotations_match_their_masks(dataset):
    assert len(dataset["annotations"]) > len(dataset["images"])
    for ann in dataset["annotations"]:
        assert isinstance(ann["segmentation"]["counts"], str)
        assert ann["segmentation"]["size"] == list(IMAGE_SIZE)
        mask = mask_util.decode(ann["segmentation"])
        assert mask.shape == IMAGE_SIZE
        ys, xs = np.nonzero(mask)
        assert len(ys) >= shapes.MIN_VISIBLE_PIXELS
        assert ann["area"] == len(ys)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann["iscrowd"] == 0
    assert len({ann["id"] for ann in dataset["annotations"]}) == len(dataset["annotations"])


def test_instances_of_an_image_do_not_overlap(dataset):
    masks = masks_by_image(dataset)
    assert set(masks) == {image["id"] for image in dataset["images"]}
    for image_masks in masks.values():
        assert 1 <= len(image_masks) <= shapes.MAX_INSTANCES_PER_IMAGE
        coverage = np.sum([mask for _, mask in image_masks], axis=0)
        assert coverage.max() == 1


def test_occluded_shapes_keep_a_visible_part():
    rng = np.random.default_rng(0)
    visible_fractions = []
    for _ in range(40):
        image, instances = shapes.render_shapes_image(rng, 96, 128)
        assert image.shape == (96, 128, 3) and image.dtype == np.uint8
        for instance in instances:
            visible = np.count_nonzero(instance["mask"])
            assert visible >= shapes.MIN_VISIBLE_PIXELS
            visible_fractions.append(visible / instance["full_area"])
    assert min(visible_fractions) >= shapes.MIN_VISIBLE_FRACTION
    assert min(visible_fractions) < 0.9  # some shapes are partly hidden by later ones


def test_shapes_contrast_in_brightness_with_what_they_cover():
    rng = np.random.default_rng(1)
    dark = light = 0
    for _ in range(40):
        image, instances = shapes.render_shapes_image(rng, 96, 128)
        for instance in instances:
            colour = instance["colour"]
            assert colour.shape == (3,)
            is_dark = bool((colour <= shapes.DARK_MAX).all())
            assert is_dark or (colour >= shapes.LIGHT_MIN).all(), colour
            dark += is_dark
            light += not is_dark
            # The visible pixels show the colour, up to the pixel noise (std 4) and rounding.
            seen = np.median(image[instance["mask"]].astype(np.float32), axis=0)
            assert np.abs(seen - np.clip(colour, 0, 255)).max() <= 6, (seen, colour)
    assert dark > 10 and light > 10


def test_categories(dataset):
    assert [c["id"] for c in dataset["categories"]] == list(range(1, len(SHAPES_CATEGORIES) + 1))
    assert [c["name"] for c in dataset["categories"]] == list(SHAPES_CATEGORIES)
    assert 5 <= len(SHAPES_CATEGORIES) <= 6
    assert {ann["category_id"] for ann in dataset["annotations"]} <= {c["id"] for c in dataset["categories"]}


def test_category_subset(tmp_path):
    json_file, _ = generate(tmp_path, categories=("star", "circle"))
    dataset = load_json(json_file)
    assert dataset["categories"] == [{"id": 1, "name": "star", "supercategory": "shape"},
                                     {"id": 2, "name": "circle", "supercategory": "shape"}]
    assert {ann["category_id"] for ann in dataset["annotations"]} <= {1, 2}


def test_pycocotools_loads_it(dataset_root, dataset):
    coco = COCO(os.path.join(dataset_root, "annotations", "instances_train.json"))
    assert sorted(coco.getImgIds()) == [image["id"] for image in dataset["images"]]
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPES_CATEGORIES)
    ann = coco.loadAnns(coco.getAnnIds(imgIds=[1]))[0]
    assert coco.annToMask(ann).sum() == ann["area"]


def test_cached_data_is_reused(tmp_path, monkeypatch):
    generate(tmp_path)

    def fail(path, image):
        raise AssertionError("regenerated")

    monkeypatch.setattr(shapes, "_write_image", fail)
    assert generate(tmp_path) == shapes.shapes_dataset_paths(tmp_path, "train")


def test_other_parameters_regenerate(tmp_path):
    generate(tmp_path, num_images=NUM_IMAGES)
    json_file, image_root = generate(tmp_path, num_images=3)
    assert len(load_json(json_file)["images"]) == 3
    assert sorted(os.listdir(image_root)) == ["000000.png", "000001.png", "000002.png"]
    with open(os.path.join(tmp_path, ".complete_train")) as f:
        assert json.load(f)["num_images"] == 3


def test_interrupted_generation_is_not_complete(tmp_path, monkeypatch):
    root = tmp_path / "shapes"
    generate(root, num_images=3)  # an earlier, complete dataset with other parameters
    write_image = shapes._write_image
    written = []

    def fail_midway(path, image):
        if len(written) == NUM_IMAGES // 2:
            raise KeyboardInterrupt
        written.append(path)
        write_image(path, image)

    monkeypatch.setattr(shapes, "_write_image", fail_midway)
    with pytest.raises(KeyboardInterrupt):
        generate(root)
    assert not os.path.exists(root / ".complete_train")
    assert not [n for n in os.listdir(root) if n.startswith(".tmp")]

    monkeypatch.setattr(shapes, "_write_image", write_image)
    generate(root)
    generate(tmp_path / "fresh")
    assert read_files(root) == read_files(tmp_path / "fresh")


def test_leftovers_of_a_killed_generation_are_removed(tmp_path):
    generate(tmp_path)
    os.remove(tmp_path / ".complete_train")
    os.makedirs(tmp_path / ".tmp_train.killed" / "train")
    generate(tmp_path)
    assert os.path.exists(tmp_path / ".complete_train")
    assert not os.path.exists(tmp_path / ".tmp_train.killed")


def _generate_in_child(root):
    generate(root, num_images=NUM_IMAGES * 2)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_processes_starting_together_generate_once(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_generate_in_child, args=(tmp_path / "shared",)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    generate(tmp_path / "fresh", num_images=NUM_IMAGES * 2)
    assert read_files(tmp_path / "shared") == read_files(tmp_path / "fresh")


def _can_mount_read_only():
    """Whether this process may bind-mount a folder read-only in a private mount namespace
    (``unshare -m``: root or CAP_SYS_ADMIN, util-linux)."""
    import shutil
    import subprocess
    import tempfile

    if not (shutil.which("unshare") and shutil.which("mount")):
        return False
    with tempfile.TemporaryDirectory() as folder:
        probe = (f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} && "
                 f"! touch {folder}/probe 2>/dev/null")
        try:
            return subprocess.run(["unshare", "-m", "sh", "-c", probe], capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False


READ_ONLY_CHECK = """
import errno, sys
from detectron2.data import DatasetCatalog
from gn_detectron.data import generate_shapes_dataset, register_shapes_dataset
root = sys.argv[1]
try:
    open(root + "/probe", "w")
except OSError as e:
    print("read-only:", e.errno == errno.EROFS)
print("paths:", generate_shapes_dataset(root, "train", {n}, {size}))
register_shapes_dataset("shapes_read_only", root, "train", {n}, {size})
print("records:", len(DatasetCatalog.get("shapes_read_only")))
try:
    generate_shapes_dataset(root, "val", {n}, {size})
except OSError as e:
    print("val:", e)
"""


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_read_only(), reason="needs unshare -m and mount (root or CAP_SYS_ADMIN)")
def test_complete_cache_on_a_read_only_mount(tmp_path):
    """A real read-only file system: ``root`` bind-mounted read-only in a private mount
    namespace (chmod does not stop root). The complete split is used; a missing split is
    refused with a message that names the folder and what to set."""
    import subprocess
    import sys

    root = tmp_path / "shapes"
    generate(root)
    before = read_files(root)
    code = READ_ONLY_CHECK.format(n=NUM_IMAGES, size=IMAGE_SIZE)
    script = tmp_path / "check.py"
    script.write_text(code)
    command = (f"mount --bind {root} {root} && mount -o remount,bind,ro {root} && "
               f"exec {sys.executable} {script} {root}")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    out = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert "read-only: True" in out.stdout
    assert f"paths: {shapes.shapes_dataset_paths(str(root), 'train')}" in out.stdout
    assert f"records: {NUM_IMAGES}" in out.stdout
    assert (f"val: [Errno 30] Cannot write the shapes dataset split 'val' under {root} (Read-only file system)"
            in out.stdout) and "Set GN_DETECTRON_DATASETS" in out.stdout
    assert read_files(root) == before


def test_complete_cache_is_read_without_writing(tmp_path, monkeypatch, caplog):
    """Simulates a read-only folder where a mount is not possible: every call shapes.py writes
    with (open for writing, mkdir, mkdtemp, replace, remove, image writes) fails with
    OSError(EROFS) for paths under ``root``. Reading a complete split makes none of those calls;
    generating one is refused with a message naming the folder."""
    import builtins
    import errno
    import logging

    root = tmp_path / "shapes"
    generate(root)
    before = read_files(root)

    def read_only(path):
        if os.path.abspath(os.fspath(path)).startswith(str(root)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    def guard(function, path_arg=0, writes=lambda *a, **k: True):
        def guarded(*args, **kwargs):
            if writes(*args, **kwargs):
                read_only(args[path_arg] if len(args) > path_arg else kwargs.get("dir"))
            return function(*args, **kwargs)
        return guarded

    monkeypatch.setattr(shapes, "open", guard(builtins.open, writes=lambda path, mode="r", *a, **k: mode != "r"),
                        raising=False)
    for name in ("mkdir", "makedirs"):  # an existing folder is no write (EEXIST, as on a read-only mount)
        monkeypatch.setattr(os, name, guard(getattr(os, name), writes=lambda path, *a, **k: not os.path.isdir(path)))
    for name in ("remove", "replace"):
        monkeypatch.setattr(os, name, guard(getattr(os, name)))
    monkeypatch.setattr(shapes.tempfile, "mkdtemp", guard(shapes.tempfile.mkdtemp, path_arg=2))
    monkeypatch.setattr(shapes, "_write_image", guard(shapes._write_image))

    assert generate(root) == shapes.shapes_dataset_paths(root, "train")
    with caplog.at_level(logging.WARNING), pytest.raises(OSError, match=(
            f"Cannot write the shapes dataset split 'val' under {root} .*Set GN_DETECTRON_DATASETS")) as error:
        generate(root, split="val")
    assert error.value.errno == errno.EROFS
    assert f"Cannot lock {root / '.lock_val'}" in caplog.text  # then the first write fails
    monkeypatch.undo()
    assert read_files(root) == before


def test_lock_that_cannot_be_created_is_skipped(tmp_path, caplog):
    """A lock file that cannot be opened (here a folder in its place: a real failure of open())
    lets generation go on without the lock, with a warning."""
    import logging

    root = tmp_path / "shapes"
    os.makedirs(root / ".lock_train")
    with caplog.at_level(logging.WARNING):
        generate(root)
    assert f"Cannot lock {root / '.lock_train'}" in caplog.text and "going on without the lock" in caplog.text
    generate(tmp_path / "fresh")
    assert {k: v for k, v in read_files(root).items()} == {k: v for k, v in read_files(tmp_path / "fresh").items()
                                                          if not k.startswith(".lock")}


@pytest.mark.parametrize("kwargs", [
    dict(num_images=0),
    dict(num_images=2.0),
    dict(image_size=(16, 80)),
    dict(image_size=(64,)),
    dict(image_size=64),
    dict(seed=-1),
    dict(split="a/b"),
    dict(split=""),
    dict(categories=("circle", "pentagon")),
    dict(categories=()),
    dict(categories=("circle", "circle")),
])
def test_bad_arguments(tmp_path, kwargs):
    kwargs = {"split": "train", "num_images": NUM_IMAGES, "image_size": IMAGE_SIZE, **kwargs}
    with pytest.raises(ValueError):
        generate_shapes_dataset(tmp_path, **kwargs)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------
# detectron2
# --------------------------------------------------------------------------------------------


def unregister(name):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)


@pytest.fixture
def dataset_name(request):
    name = f"test_shapes_{request.node.name}"
    unregister(name)
    yield name
    unregister(name)


@pytest.fixture
def default_names_free():
    """Lets a test register "shapes_train"/"shapes_val", restoring any earlier registration."""
    names = ("shapes_train", "shapes_val") + tuple(shapes.SHAPES_VARIANTS)
    saved_funcs = {n: DatasetCatalog[n] for n in names if n in DatasetCatalog}
    saved_metadata = {n: MetadataCatalog[n] for n in names if n in MetadataCatalog}
    for name in names:
        unregister(name)
    yield names
    for name in names:
        unregister(name)
    DatasetCatalog.update(saved_funcs)
    MetadataCatalog.update(saved_metadata)


def test_register_shapes_dataset(tmp_path, dataset_name):
    register_shapes_dataset(dataset_name, tmp_path, "val", NUM_IMAGES, IMAGE_SIZE, seed=5)
    register_shapes_dataset(dataset_name, tmp_path, "val", NUM_IMAGES, IMAGE_SIZE, seed=5)  # no error
    assert not os.path.exists(tmp_path / "val")  # generated on first use

    records = DatasetCatalog.get(dataset_name)
    assert len(records) == NUM_IMAGES
    for record in records:
        assert os.path.isfile(record["file_name"])
        assert (record["height"], record["width"]) == IMAGE_SIZE
        assert record["annotations"]
        for ann in record["annotations"]:
            assert ann["bbox_mode"] == BoxMode.XYWH_ABS
            assert isinstance(ann["segmentation"], dict) and isinstance(ann["segmentation"]["counts"], str)
            assert 0 <= ann["category_id"] < len(SHAPES_CATEGORIES)

    metadata = MetadataCatalog.get(dataset_name)
    assert metadata.thing_classes == list(SHAPES_CATEGORIES)
    assert metadata.evaluator_type == "coco"
    assert os.path.isfile(metadata.json_file) and os.path.isdir(metadata.image_root)


def test_register_shapes_datasets(tmp_path, default_names_free):
    names = register_shapes_datasets(root=tmp_path, num_train=6, num_val=3, image_size=IMAGE_SIZE)
    assert names == ["shapes_train", "shapes_val"] + list(shapes.SHAPES_VARIANTS)
    assert register_shapes_datasets(root=tmp_path, num_train=6, num_val=3, image_size=IMAGE_SIZE) == names
    assert len(DatasetCatalog.get("shapes_train")) == 6
    assert len(DatasetCatalog.get("shapes_val")) == 3
    for name in names[:2]:
        assert MetadataCatalog.get(name).thing_classes == list(SHAPES_CATEGORIES)
    assert MetadataCatalog.get("shapes_a_train").thing_classes == list(SHAPES_CATEGORIES[:4])
    assert MetadataCatalog.get("shapes_b_val").thing_classes == list(SHAPES_CATEGORIES[4:])
    assert not os.path.exists(tmp_path / "a_train")  # variants are generated only when used
    train = {r["file_name"] for r in DatasetCatalog.get("shapes_train")}
    assert train.isdisjoint(r["file_name"] for r in DatasetCatalog.get("shapes_val"))


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("GN_DETECTRON_DATASETS", str(tmp_path))
    assert shapes.default_shapes_root() == str(tmp_path)
    monkeypatch.delenv("GN_DETECTRON_DATASETS")
    assert shapes.default_shapes_root() == os.path.expanduser("~/.cache/gn_detectron/shapes")


def test_coco_evaluator_scores_ground_truth_as_perfect(tmp_path, dataset_name):
    register_shapes_dataset(dataset_name, tmp_path, "val", NUM_IMAGES, IMAGE_SIZE)
    records = DatasetCatalog.get(dataset_name)
    evaluator = COCOEvaluator(dataset_name, tasks=("bbox", "segm"), distributed=False)
    evaluator.reset()
    for record in records:
        anns = record["annotations"]
        instances = Instances((record["height"], record["width"]))
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        instances.scores = torch.ones(len(anns))
        instances.pred_classes = torch.tensor([a["category_id"] for a in anns])
        instances.pred_masks = torch.from_numpy(
            np.stack([mask_util.decode(a["segmentation"]) for a in anns]).astype(bool))
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["segm"]["AP"] == pytest.approx(100.0)
