"""tools/benchmark_train.py in CI size: every variant trains two steps on the CPU and the report
holds their times, memory and ratios to native, for both schedules (interleaved steps with each
variant's peak memory from a child process; one variant after the other)."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("detectron2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_benchmark(tmp_path, schedule, variants):
    out = tmp_path / f"bench_{schedule}.json"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "benchmark_train.py"), "--device", "cpu",
           "--iters", "2", "--warmup", "1", "--infer-iters", "1", "--image-size", "128", "160",
           "--schedule", schedule, "--variants", *variants,
           "--json", str(out), "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.ROI_BOX_HEAD.CONV_DIM", "64",
           "MODEL.ROI_MASK_HEAD.CONV_DIM", "64"]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert "ratios to native" in run.stdout
    report = json.loads(out.read_text())
    assert report["env"]["schedule"] == schedule
    rows = {r["variant"]: r for r in report["rows"]}
    assert set(rows) == set(variants)
    for name, r in rows.items():
        assert len(r["steps"]) == 2 and r["step_s"] > 0 and r["peak_mb"] > 0 and r["infer_s_per_image"] > 0
        if name != "native":
            assert r["speedup_vs_native"] > 0 and r["memory_vs_native"] > 0
    return rows


@pytest.mark.slow
def test_benchmark_train_interleaved(tmp_path):
    rows = run_benchmark(tmp_path, "interleaved", ["native", "fast", "fast_fused", "frozen_bn"])
    for name in ("fast", "fast_fused", "frozen_bn"):
        # Paired ratios: the median of native's step over the variant's step, round by round.
        r, base = rows[name], rows["native"]
        ratios = sorted(b / t for b, t in zip(base["steps"], r["steps"]))
        assert r["paired_speedup_vs_native"] == pytest.approx((ratios[0] + ratios[1]) / 2)


@pytest.mark.slow
def test_benchmark_train_sequential(tmp_path):
    rows = run_benchmark(tmp_path, "sequential", ["native", "fast_fused"])
    assert "paired_speedup_vs_native" not in rows["fast_fused"]
