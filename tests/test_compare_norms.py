"""tools/compare_norms.py (the demo's Mask R-CNN with GN, BN and frozen BN): the variants'
configs, and a smoke run of all three at tiny size."""
import json
import os
import sys

import pytest

pytest.importorskip("detectron2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import compare_norms  # noqa: E402
from test_train_net import TINY  # noqa: E402


def test_variants_change_only_the_norms(tmp_path):
    from detectron2.config import get_cfg

    from gn_detectron.config import add_gn_config
    from gn_detectron.modeling import build_model

    norms = {}
    for name in compare_norms.VARIANTS:
        cfg = get_cfg()
        add_gn_config(cfg)
        cfg.merge_from_file(compare_norms.DEFAULT_CONFIG)
        cfg.merge_from_list(compare_norms.variant_opts(name, TINY, str(tmp_path)))
        cfg.MODEL.DEVICE = "cpu"
        assert cfg.OUTPUT_DIR == os.path.join(str(tmp_path), name)
        model = build_model(cfg)
        norms[name] = {type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__}
    assert norms["GN"] == {"GroupNorm"}
    assert norms["BN"] == {"BatchNorm2d"}
    assert norms["FrozenBN"] == {"FrozenBatchNorm2d"}


def test_bad_overrides_are_refused():
    with pytest.raises(SystemExit):
        compare_norms.parse_args(["SOLVER.MAX_ITER"])


@pytest.mark.slow
def test_smoke_run_of_the_three_variants(tmp_path, monkeypatch):
    monkeypatch.setenv("GN_DETECTRON_DATASETS", str(tmp_path / "shapes"))
    monkeypatch.setenv("PYTHONPATH", ROOT)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "compare"
    rows = compare_norms.main(["--output-dir", str(out), *TINY, "SOLVER.MAX_ITER", "2",
                               "SOLVER.CHECKPOINT_PERIOD", "100"])
    assert [r["variant"] for r in rows] == ["GN", "BN", "FrozenBN"]
    for row in rows:
        assert row["status"] == "ok", row
        # AP is None (NaN) only where a barely trained model detects nothing at all
        for key in ("box_AP", "mask_AP"):
            assert row[key] is None or 0.0 <= row[key] <= 100.0, row
        assert (out / row["variant"] / "results.json").is_file()
    log = (out / "FrozenBN" / "compare_norms.log").read_text()
    assert "FrozenBN: statistics of" in log
    with open(out / "results.json") as f:
        assert json.load(f)["rows"] == rows
    assert "| FrozenBN |" in (out / "table.md").read_text()
    assert (out / "compare_norms.png").stat().st_size > 1000
