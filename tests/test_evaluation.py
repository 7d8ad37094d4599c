"""COCO evaluation backends: faster-coco-eval gives the same metrics as pycocotools (and as
detectron2's own evaluator) for bbox and segm, through the trainer's build_evaluator; the
fallback to pycocotools with one warning; progress with an ETA; the benchmark in CI size."""
import copy
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("detectron2")
pytest.importorskip("faster_coco_eval")
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402

from gn_detectron.evaluation import COCOEvaluator, ProgressETA, backends, get_coco_eval_backend  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import benchmark_eval  # noqa: E402

TOLERANCE = 0.05  # AP points


@pytest.fixture(scope="module")
def predictions(tmp_path_factory):
    """A registered dataset of 40 shapes images (non-contiguous category ids, crowds, images
    without annotations) and 30 detections per image, processed by the evaluator."""
    tmp = tmp_path_factory.mktemp("eval")
    data, instances = benchmark_eval.make_ground_truth(40, (96, 128), seed=3)
    json_file = tmp / "gt.json"
    json_file.write_text(json.dumps(data))
    name = benchmark_eval.register_benchmark_dataset("eval_test_shapes", str(json_file), str(tmp))
    outputs = benchmark_eval.make_predictions(instances, (96, 128), 30, seed=4)
    preds = benchmark_eval.processed_predictions(name, outputs)
    yield name, preds
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _evaluate(kind, name, preds, **kwargs):
    evaluator = (benchmark_eval.build_evaluator(kind, name, None) if not kwargs
                 else COCOEvaluator(name, tasks=("bbox", "segm"), distributed=False, backend=kind, **kwargs))
    evaluator.reset()
    evaluator._predictions = copy.deepcopy(preds)
    return evaluator.evaluate()


def _assert_same_metrics(a, b, tolerance=TOLERANCE):
    assert set(a) == set(b) == {"bbox", "segm"}
    for task in a:
        assert set(a[task]) == set(b[task])
        assert len(a[task]) == 6 + 6  # AP, AP50, AP75, APs, APm, APl and six per-category APs
        for metric, va in a[task].items():
            vb = b[task][metric]
            assert (np.isnan(va) and np.isnan(vb)) or abs(va - vb) <= tolerance, (task, metric, va, vb)


def test_faster_coco_eval_equals_pycocotools_and_detectron2(predictions):
    name, preds = predictions
    fast = _evaluate("faster_coco_eval", name, preds)
    slow = _evaluate("pycocotools", name, preds)
    d2 = _evaluate("detectron2", name, preds)
    _assert_same_metrics(fast, slow)
    _assert_same_metrics(fast, d2)
    # the data is neither trivial nor hopeless: the metrics compared are informative
    assert 1 < fast["bbox"]["AP"] < 90 and 1 < fast["segm"]["AP"] < 90
    assert fast["bbox"]["AP"] != fast["segm"]["AP"]


def test_custom_max_detections_per_image(predictions):
    name, preds = predictions
    fast = _evaluate("faster_coco_eval", name, preds, max_dets_per_image=10)
    slow = _evaluate("pycocotools", name, preds, max_dets_per_image=10)
    _assert_same_metrics(fast, slow)
    default = _evaluate("faster_coco_eval", name, preds, max_dets_per_image=100)
    assert fast["bbox"]["AP"] != default["bbox"]["AP"]  # the limit is applied


def test_evaluate_twice_gives_the_same_results(predictions):
    name, preds = predictions
    evaluator = COCOEvaluator(name, tasks=("bbox", "segm"), distributed=False)
    evaluator.reset()
    evaluator._predictions = copy.deepcopy(preds)
    first = evaluator.evaluate()
    assert evaluator._predictions == preds  # results are copied, not changed in place
    _assert_same_metrics(evaluator.evaluate(), first, tolerance=0.0)


def test_trainer_builds_the_configured_evaluator(predictions, tmp_path):
    from detectron2.config import get_cfg

    from gn_detectron.config import add_gn_config
    from gn_detectron.engine import GNTrainer

    name, _ = predictions
    cfg = add_gn_config(get_cfg())
    cfg.MODEL.MASK_ON = True
    evaluator = GNTrainer.build_evaluator(cfg, name, output_folder=str(tmp_path))
    assert isinstance(evaluator, COCOEvaluator) and evaluator.backend_name == "faster_coco_eval"
    assert evaluator._tasks == ("bbox", "segm")
    cfg.TEST.COCO_EVAL_BACKEND = "pycocotools"
    assert GNTrainer.build_evaluator(cfg, name, output_folder=str(tmp_path)).backend_name == "pycocotools"
    cfg.TEST.COCO_EVAL_BACKEND = "fast"
    with pytest.raises(ValueError, match=r"TEST.COCO_EVAL_BACKEND 'fast' is unknown; registered backends: "
                                         r"\['faster_coco_eval', 'pycocotools'\]"):
        GNTrainer.build_evaluator(cfg, name)


def test_missing_faster_coco_eval_falls_back_with_one_warning(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # import faster_coco_eval fails
    monkeypatch.setattr(backends, "_warned_fallback", set())
    with caplog.at_level(logging.WARNING, logger="gn_detectron.evaluation.backends"):
        first = get_coco_eval_backend("faster_coco_eval")
        second = get_coco_eval_backend("faster_coco_eval")
    assert first.name == second.name == "pycocotools"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'faster_coco_eval' is not available" in warnings[0] and "using 'pycocotools'" in warnings[0]


def test_fallback_evaluator_still_evaluates(predictions, monkeypatch):
    name, preds = predictions
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)
    monkeypatch.setattr(backends, "_warned_fallback", set())
    evaluator = COCOEvaluator(name, tasks=("bbox",), distributed=False, backend="faster_coco_eval")
    assert evaluator.backend_name == "pycocotools"


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_eta(caplog):
    clock = FakeClock()
    progress = ProgressETA(100, "IoUs", first_after=5.0, every=10.0, clock=clock,
                           logger=logging.getLogger("progress_test"))
    with caplog.at_level(logging.INFO, logger="progress_test"):
        clock.now += 4.0
        progress.step(10)  # before first_after: silent
        assert progress.lines == 0
        clock.now += 6.0
        progress.step(15)  # 25 of 100 after 10 s: 30 s left
        assert progress.lines == 1
        assert caplog.records[-1].getMessage() == "IoUs: 25/100 (25%), 0:00:10 elapsed, ETA 0:00:30"
        clock.now += 5.0
        progress.step(5)  # within `every` of the last line: silent
        assert progress.lines == 1
        clock.now += 5.0
        progress.step(10)  # 40 after 20 s: 30 s left
        assert caplog.records[-1].getMessage() == "IoUs: 40/100 (40%), 0:00:20 elapsed, ETA 0:00:30"
    with pytest.raises(ValueError):
        ProgressETA(-1, "x")


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_long_evaluations_log_progress(predictions, backend, monkeypatch, caplog):
    name, preds = predictions
    monkeypatch.setattr(backends, "PROGRESS_FIRST_AFTER_S", 0.0)
    monkeypatch.setattr(backends, "PROGRESS_EVERY_S", 0.0)  # every step logs
    with caplog.at_level(logging.INFO, logger="gn_detectron.evaluation.backends"):
        _evaluate(backend, name, preds, max_dets_per_image=100)
    lines = [r.getMessage() for r in caplog.records if "evaluation, IoUs" in r.getMessage()]
    assert lines and all("elapsed, ETA" in line for line in lines)
    assert any(line.startswith("COCO segm evaluation, IoUs") for line in lines)
    last = [line for line in lines if line.startswith("COCO segm")][-1]
    done, total = last.split(": ")[1].split(" ")[0].split("/")
    assert done == total  # the count reaches the total


@pytest.mark.slow
def test_benchmark_eval_ci_size(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "benchmark_eval.py"), "--num-images", "12",
                          "--detections", "10", "--image-size", "64", "80", "--json", str(out)],
                         capture_output=True, text=True, cwd=ROOT, timeout=600,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert "faster_coco_eval vs pycocotools (same evaluator):" in run.stdout
    report = json.loads(out.read_text())
    assert report["config"]["num_detections"] == 120
    rows = {r["evaluator"]: r for r in report["rows"]}
    assert set(rows) == {"detectron2", "pycocotools", "faster_coco_eval"}
    for r in rows.values():
        assert r["evaluate_s"] > 0 and r["speedup"] > 0
        assert r["max_abs_ap_difference"] <= TOLERANCE
    assert report["faster_vs_pycocotools"] == pytest.approx(
        rows["pycocotools"]["evaluate_s"] / rows["faster_coco_eval"]["evaluate_s"])
