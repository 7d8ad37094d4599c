"""tools/benchmark_train.py in CI size: every variant trains two steps on the CPU and the report
holds their times, memory and ratios to native."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("detectron2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_benchmark_train_smoke(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "benchmark_train.py"), "--device", "cpu",
           "--iters", "2", "--warmup", "1", "--infer-iters", "1", "--image-size", "128", "160",
           "--variants", "native", "fast", "fast_fused", "frozen_bn",
           "--json", str(out), "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.ROI_BOX_HEAD.CONV_DIM", "64",
           "MODEL.ROI_MASK_HEAD.CONV_DIM", "64"]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    report = json.loads(out.read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    assert set(rows) == {"native", "fast", "fast_fused", "frozen_bn"}
    for name, r in rows.items():
        assert len(r["steps"]) == 2 and r["step_s"] > 0 and r["peak_mb"] > 0 and r["infer_s_per_image"] > 0
        if name != "native":
            assert r["speedup_vs_native"] > 0 and r["memory_vs_native"] > 0
    assert "ratios to native" in run.stdout
