"""tools/train_net.py: training and COCO evaluation on the built-in dataset, evaluation only,
CPU multi-process training (ranks stay identical), two "machines" on the loopback address,
torchrun, and fine-tuning to other classes."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

pytest.importorskip("detectron2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
CONFIG = os.path.join(ROOT, "configs", "shapes", "mask_rcnn_gn.yaml")

# A tiny run: the tiny shapes sets, small images, a narrow FPN, a few iterations.
TINY = [
    "DATASETS.TRAIN", "('shapes_train_tiny',)", "DATASETS.TEST", "('shapes_val_tiny',)",
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "160",
    "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160",
    "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.ROI_BOX_HEAD.CONV_DIM", "64",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "64", "MODEL.ROI_BOX_HEAD.FC_DIM", "128",
    "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()", "SOLVER.BASE_LR", "0.01",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Environment of the training processes: one dataset cache for the module."""
    cache = tmp_path_factory.mktemp("shapes")
    return {**os.environ, "GN_DETECTRON_DATASETS": str(cache), "PYTHONPATH": ROOT,
            "OMP_NUM_THREADS": "1"}


def run(args, env, timeout=600):
    out = subprocess.run([sys.executable] + args, capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out.stdout + out.stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, env):
    out_dir = tmp_path_factory.mktemp("run")
    log = run([TRAIN_NET, "--config-file", CONFIG] + TINY +
              ["SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2", "OUTPUT_DIR", str(out_dir)], env)
    return out_dir, log


def test_train_writes_metrics_events_checkpoints_and_results(trained):
    out_dir, log = trained
    files = os.listdir(out_dir)
    assert "metrics.json" in files and "last_checkpoint" in files and "model_final.pth" in files
    assert any(f.startswith("events.out.tfevents") for f in files)
    assert (out_dir / "last_checkpoint").read_text() == "model_final.pth"
    records = [json.loads(line) for line in (out_dir / "metrics.json").read_text().splitlines()]
    assert [r["iteration"] for r in records if "total_loss" in r][-1] == 3
    results = json.loads((out_dir / "results.json").read_text())
    assert set(results) >= {"bbox", "segm"} and "AP" in results["segm"]
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log  # the AP table printed at the end
    assert "with a fused ReLU (MODEL.GN.IMPL=fast)" in log


def test_eval_only(trained, env, tmp_path):
    out_dir, _ = trained
    log = run([TRAIN_NET, "--config-file", CONFIG, "--eval-only"] + TINY +
              ["MODEL.WEIGHTS", str(out_dir / "model_final.pth"), "OUTPUT_DIR", str(tmp_path)], env)
    results = json.loads((tmp_path / "results.json").read_text())
    assert "segm" in results
    assert "Starting training" not in log
    assert not (tmp_path / "model_final.pth").exists()


@pytest.mark.slow
def test_cpu_two_processes_keep_identical_weights(env, tmp_path):
    run([os.path.join(ROOT, "tests", "_dist_train.py"), "--config-file", CONFIG, "--num-gpus", "2"] + TINY +
        ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3", "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path)], env)
    a = torch.load(tmp_path / "rank0.pth")
    b = torch.load(tmp_path / "rank1.pth")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    final = torch.load(tmp_path / "model_final.pth", weights_only=False)["model"]
    assert all(torch.equal(final[k], a[k]) for k in a)  # rank 0 saved what both hold


@pytest.mark.slow
def test_two_machines_on_loopback(env, tmp_path):
    url = f"tcp://127.0.0.1:{free_port()}"
    procs = []
    for rank in range(2):
        args = [sys.executable, TRAIN_NET, "--config-file", CONFIG, "--num-gpus", "1", "--num-machines", "2",
                "--machine-rank", str(rank), "--dist-url", url] + TINY + [
                "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()",
                "OUTPUT_DIR", str(tmp_path / f"m{rank}")]
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env=env, cwd=ROOT))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    assert (tmp_path / "m0" / "model_final.pth").exists()  # the main process saves
    assert not (tmp_path / "m1" / "model_final.pth").exists()


@pytest.mark.slow
def test_torchrun(env, tmp_path):
    run(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
         TRAIN_NET, "--config-file", CONFIG] + TINY +
        ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path)], env)
    assert (tmp_path / "model_final.pth").exists()


# The losses that do not depend on which classes are learnt: objectness and box of the RPN, and
# the mask loss (averaged over foreground RoIs). The classification and box-regression losses of
# the box head are not comparable between runs: a model that finds objects samples more
# foreground RoIs, whose losses are larger than those of background RoIs.
CLASS_AGNOSTIC = ("loss_rpn_cls", "loss_rpn_loc", "loss_mask")


def _mean_loss(out_dir, keys=CLASS_AGNOSTIC, last=5):
    records = [json.loads(line) for line in (out_dir / "metrics.json").read_text().splitlines()]
    losses = [sum(r[k] for k in keys) for r in records if "total_loss" in r]
    return sum(losses[-last:]) / len(losses[-last:])


@pytest.mark.slow
def test_fine_tuning_from_other_classes_beats_scratch(env, tmp_path):
    """Train on four shape classes, fine-tune on the other two from that checkpoint: the
    class-dependent layers are re-initialised (one log line) and the class-agnostic losses
    (RPN and mask) fall faster than from scratch over the same iterations."""
    common = [TRAIN_NET, "--config-file", CONFIG] + TINY + ["DATASETS.TEST", "()", "SOLVER.BASE_LR", "0.02"]
    run(common + ["DATASETS.TRAIN", "('shapes_a_train',)", "MODEL.ROI_HEADS.NUM_CLASSES", "4",
                  "SOLVER.MAX_ITER", "80", "OUTPUT_DIR", str(tmp_path / "a")], env)
    b = common + ["DATASETS.TRAIN", "('shapes_b_train',)", "MODEL.ROI_HEADS.NUM_CLASSES", "2",
                  "SOLVER.MAX_ITER", "30"]
    log = run(b + ["MODEL.WEIGHTS", str(tmp_path / "a" / "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "ft")], env)
    run(b + ["OUTPUT_DIR", str(tmp_path / "scratch")], env)
    assert log.count("Fine-tuning to a different number of classes: re-initialised 6 class-dependent") == 1
    assert "Skip loading parameter" not in log
    finetuned, scratch = _mean_loss(tmp_path / "ft"), _mean_loss(tmp_path / "scratch")
    assert finetuned < 0.85 * scratch, (finetuned, scratch)
