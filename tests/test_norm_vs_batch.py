"""tools/norm_vs_batch.py (BN against the plugin's GN over images per batch): its data, its model
and a smoke run at tiny size."""
import json
import os
import sys

import pytest
import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import norm_vs_batch  # noqa: E402
from gn_detectron.data.shapes import SHAPES_CATEGORIES  # noqa: E402
from gn_detectron.layers import GroupNorm  # noqa: E402


def test_shape_crops_are_deterministic_and_labelled():
    images, labels = norm_vs_batch.make_shape_crops(40, seed=3, crop_size=16)
    assert images.shape == (40, 3, 16, 16) and images.dtype == torch.float32
    assert labels.shape == (40,) and labels.dtype == torch.int64
    assert 0 <= labels.min() and labels.max() < len(SHAPES_CATEGORIES)
    assert len(labels.unique()) >= 4  # categories are drawn uniformly
    again, again_labels = norm_vs_batch.make_shape_crops(40, seed=3, crop_size=16)
    assert torch.equal(images, again) and torch.equal(labels, again_labels)
    other, _ = norm_vs_batch.make_shape_crops(40, seed=4, crop_size=16)
    assert not torch.equal(images, other)


def test_models_use_the_named_norm():
    bn = norm_vs_batch.small_resnet("BN", (8, 16), num_groups=4)
    gn = norm_vs_batch.small_resnet("GN", (8, 16), num_groups=4)
    assert any(isinstance(m, nn.BatchNorm2d) for m in bn.modules())
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and not isinstance(m, GroupNorm)
                   for m in gn.modules())
    assert all(m.num_groups == 4 for m in gn.modules() if isinstance(m, GroupNorm))
    assert bn(torch.randn(2, 3, 16, 16)).shape == (2, len(SHAPES_CATEGORIES))
    with pytest.raises(ValueError, match="norm must be one of"):
        norm_vs_batch.small_resnet("LN")


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        norm_vs_batch.parse_args(["--batch-sizes", "1"])
    with pytest.raises(SystemExit):
        norm_vs_batch.parse_args(["--num-train", "8", "--batch-sizes", "16"])


@pytest.fixture
def one_thread():
    """Tiny steps run fastest on one thread (and do not fight other processes for the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_quick_run_writes_table_json_and_plot(tmp_path, one_thread):
    results = norm_vs_batch.main(["--quick", "--workers", "1", "--output-dir", str(tmp_path)])
    assert {(r["norm"], r["batch_size"]) for r in results} == {("BN", 4), ("GN", 4), ("BN", 2), ("GN", 2)}
    for r in results:
        assert 0.0 <= r["val_error"] <= 100.0
        assert r["lr"] == pytest.approx(0.1 * r["batch_size"] / 32)  # linear scaling
        assert r["steps"] == 24 // r["batch_size"]
    with open(tmp_path / "results.json") as f:
        assert json.load(f)["results"] == results
    table = (tmp_path / "table.md").read_text()
    assert "| BN val error (%) |" in table and "| GN val error (%) |" in table
    assert (tmp_path / "norm_vs_batch.png").stat().st_size > 1000


@pytest.mark.slow
def test_worker_processes_give_the_serial_results(tmp_path, one_thread):
    """The runs in two worker processes give exactly the results of the same runs in this one
    (each run is seeded, and the workers generate the same crops)."""
    common = ["--quick", "--batch-sizes", "4", "--output-dir"]
    serial = norm_vs_batch.main(common + [str(tmp_path / "serial"), "--workers", "1"])
    parallel = norm_vs_batch.main(common + [str(tmp_path / "parallel"), "--workers", "2"])
    keys = ("norm", "batch_size", "lr", "steps", "val_error", "final_train_loss")
    assert [{k: r[k] for k in keys} for r in parallel] == [{k: r[k] for k in keys} for r in serial]
    with open(tmp_path / "parallel" / "results.json") as f:
        assert json.load(f)["threads_per_run"] == 1
