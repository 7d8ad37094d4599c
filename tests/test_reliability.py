"""Training survives interruption: a SIGKILLed run resumes from its last checkpoint with the same
learning-rate schedule; bad configuration fails before training with a message that says what
to change; a NaN loss stops training with the iteration and the loss terms."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("detectron2")

from test_train_net import CONFIG, ROOT, TINY, TRAIN_NET, env, run  # noqa: E402,F401


def _metrics(out_dir):
    path = os.path.join(out_dir, "metrics.json")
    return [json.loads(line) for line in open(path).read().splitlines()]


@pytest.mark.slow
def test_sigkill_then_resume_continues_the_schedule(env, tmp_path):  # noqa: F811
    args = [sys.executable, TRAIN_NET, "--config-file", CONFIG] + TINY + [
        "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "12", "SOLVER.STEPS", "(6, 10)",
        "SOLVER.CHECKPOINT_PERIOD", "4", "SOLVER.WARMUP_ITERS", "2"]
    # the reference: one uninterrupted run
    run(args[1:] + ["OUTPUT_DIR", str(tmp_path / "ref")], env)
    ref_lr = {r["iteration"]: r["lr"] for r in _metrics(tmp_path / "ref") if "lr" in r}

    out = tmp_path / "killed"
    proc = subprocess.Popen(args + ["OUTPUT_DIR", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (out / "model_0000003.pth").exists():
        assert proc.poll() is None, "training ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model_final.pth").exists()
    saved = (out / "last_checkpoint").read_text()
    assert saved.startswith("model_") and saved.endswith(".pth")

    log = run([TRAIN_NET, "--resume"] + args[2:] + ["OUTPUT_DIR", str(out)], env)
    start = int(saved[len("model_"):-len(".pth")]) + 1
    assert f"Starting training from iteration {start}" in log
    assert (out / "model_final.pth").exists()
    lr = {r["iteration"]: r["lr"] for r in _metrics(out) if "lr" in r}
    assert max(lr) == 11
    for it in lr:
        if it >= start:
            assert lr[it] == pytest.approx(ref_lr[it]), it


def test_batch_not_divisible_by_processes_fails_before_training(env, tmp_path):  # noqa: F811
    out = subprocess.run([sys.executable, TRAIN_NET, "--config-file", CONFIG, "--num-gpus", "2"] + TINY + [
        "SOLVER.IMS_PER_BATCH", "3", "SOLVER.REFERENCE_WORLD_SIZE", "0", "SOLVER.MAX_ITER", "2",
        "OUTPUT_DIR", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "SOLVER.IMS_PER_BATCH=3 cannot be split over 2 processes" in text
    assert "Starting training" not in text


@pytest.mark.parametrize("opts,message", [
    (["MODEL.GN.IMPL", "turbo"], "MODEL.GN.IMPL must be one of"),
    (["MODEL.GN.NUM_GROUPS", "48"], "MODEL.GN.NUM_GROUPS=48 does not divide the 64 channels"),
    (["MODEL.RESNETS.NORM", "GroupNormFast"], "unknown norm 'GroupNormFast'; registered norms:"),
    (["MODEL.GN.EPS", "1e999"], "MODEL.GN.EPS must be a finite number >= 0 (the paper uses 1e-5), got inf"),
])
def test_bad_gn_config_fails_before_training(env, tmp_path, opts, message):  # noqa: F811
    out = subprocess.run([sys.executable, TRAIN_NET, "--config-file", CONFIG] + TINY + opts + [
        "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
        env=env, timeout=600)
    assert out.returncode != 0
    assert message in out.stdout + out.stderr
    assert "Starting training" not in out.stdout + out.stderr


def test_nan_loss_stops_training_with_iteration_and_terms(env, tmp_path):  # noqa: F811
    out = subprocess.run([sys.executable, TRAIN_NET, "--config-file", CONFIG] + TINY + [
        "SOLVER.BASE_LR", "1e6", "SOLVER.WARMUP_ITERS", "0", "SOLVER.MAX_ITER", "50", "DATASETS.TEST", "()",
        "OUTPUT_DIR", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "Training diverged at iteration" in text
    assert "Last logged loss terms: {" in text and "loss_mask" in text
    assert not (tmp_path / "model_final.pth").exists()


@pytest.fixture(scope="module")
def tiny_weights(env, tmp_path_factory):  # noqa: F811
    """A checkpoint of the tiny model (its initial weights, saved as training would)."""
    path = tmp_path_factory.mktemp("weights") / "model_tiny.pth"
    code = f"""
import sys, torch
sys.path.insert(0, {ROOT!r}); sys.path.insert(0, {os.path.join(ROOT, "tools")!r})
from gn_detectron.engine import GNTrainer, setup_cfg
from train_net import parse_args
cfg = setup_cfg(parse_args({["--config-file", CONFIG] + TINY + ["OUTPUT_DIR", str(path.parent / "out")]!r}))
torch.save({{"model": GNTrainer.build_model(cfg).state_dict()}}, {str(path)!r})
"""
    run(["-c", code], env)
    return path


def test_evaluation_with_images_without_detections_completes(env, tmp_path, tiny_weights):  # noqa: F811
    """A model that detects nothing on some (here: all) images still gets a full evaluation."""
    run([TRAIN_NET, "--config-file", CONFIG, "--eval-only"] + TINY + [
        "MODEL.WEIGHTS", str(tiny_weights), "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "1.01",
        "OUTPUT_DIR", str(tmp_path)], env)
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) >= {"bbox", "segm"}


@pytest.mark.parametrize("weights,message", [
    ("", "Nothing to evaluate: MODEL.WEIGHTS is empty"),
    ("DIR", "is a directory, not a weights file"),
    ("FOREIGN", "none of its"),
], ids=["no_weights", "directory", "no_tensor_fits"])
def test_eval_only_refuses_weights_that_did_not_load(env, tmp_path, tiny_weights, weights, message):  # noqa: F811
    """--eval-only with nothing loaded exits non-zero with the reason, and writes no results."""
    if weights == "DIR":
        weights = str(tiny_weights.parent)
    elif weights == "FOREIGN":
        import torch

        sd = torch.load(tiny_weights, weights_only=True)["model"]
        torch.save({"model": {k: v.reshape(-1)[:1].clone() for k, v in sd.items() if v.numel() > 1}},
                   tmp_path / "foreign.pth")
        weights = str(tmp_path / "foreign.pth")
    out = subprocess.run([sys.executable, TRAIN_NET, "--config-file", CONFIG, "--eval-only"] + TINY + [
        "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path / "out")], capture_output=True, text=True,
        cwd=ROOT, env=env, timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert message in text.strip().splitlines()[-1], text[-2000:]
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.slow
def test_resident_memory_does_not_grow(env, tmp_path):  # noqa: F811
    """Two hundred training iterations: after warm-up, the peak resident memory of the process
    grows by less than 5% (the figure is printed)."""
    code = f"""
import sys
sys.path.insert(0, {ROOT!r}); sys.path.insert(0, {os.path.join(ROOT, "tools")!r})
from detectron2.engine import HookBase
from gn_detectron.engine import GNTrainer, setup_cfg
from train_net import parse_args

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

class Record(HookBase):
    def __init__(self): self.rss = {{}}
    def after_step(self):
        if self.trainer.iter in (49, 199): self.rss[self.trainer.iter] = rss_mb()

args = parse_args({["--config-file", CONFIG] + TINY + ["DATASETS.TEST", "()", "SOLVER.MAX_ITER", "200",
                    "SOLVER.CHECKPOINT_PERIOD", "1000", "OUTPUT_DIR", str(tmp_path)]!r})
trainer = GNTrainer(setup_cfg(args))
hook = Record()
trainer.register_hooks([hook])
trainer.train()
print("RSS_MB", hook.rss[49], hook.rss[199])
"""
    out = run(["-c", code], env, timeout=1500)
    line = [l for l in out.splitlines() if l.startswith("RSS_MB")][-1]
    at50, at200 = map(float, line.split()[1:])
    print(f"resident memory after 50 iterations {at50:.0f} MB, after 200 {at200:.0f} MB")
    assert at200 < 1.05 * at50, (at50, at200)
