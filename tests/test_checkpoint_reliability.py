"""Checkpoints under hostile conditions: evaluation refuses weights that did not load, a damaged or
foreign last_checkpoint, a full disk during a save, temporaries of killed saves, two runs on one
OUTPUT_DIR."""
import contextlib
import errno
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

pytest.importorskip("detectron2")

from gn_detectron.checkpoint.checkpointer import (  # noqa: E402
    CheckpointSaveError, GNCheckpointer, WeightsNotLoadedError, remove_stale_temporaries)
from gn_detectron.engine.output_dir import OutputDirInUseError, lock_output_dir  # noqa: E402


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Conv2d(8, 4, 1))


# -- evaluation refuses weights that did not load ------------------------------------------------

def test_evaluation_without_weights_is_refused(tmp_path):
    with pytest.raises(WeightsNotLoadedError, match="MODEL.WEIGHTS is empty") as info:
        GNCheckpointer(_model(), str(tmp_path)).load_for_evaluation("")
    assert "--resume" in str(info.value)


def test_evaluation_with_no_fitting_tensor_is_refused(tmp_path):
    foreign = {k: torch.zeros(*v.shape, 2) for k, v in _model().state_dict().items()}  # every shape wrong
    torch.save({"model": foreign}, tmp_path / "other.pth")
    with pytest.raises(WeightsNotLoadedError, match=r"none of its 6 tensors fits the model \(6 have another shape"):
        GNCheckpointer(_model(), str(tmp_path)).load_for_evaluation(str(tmp_path / "other.pth"))
    renamed = {"backbone." + k: v for k, v in _model().state_dict().items()}  # names the model lacks
    torch.save({"model": renamed}, tmp_path / "renamed.pth")
    with pytest.raises(WeightsNotLoadedError, match="6 have names the model does not have"):
        GNCheckpointer(_model(), str(tmp_path)).load_for_evaluation(str(tmp_path / "renamed.pth"))


def test_evaluation_with_non_finite_weights_is_refused(tmp_path):
    sd = _model().state_dict()
    sd["1.weight"] = torch.full_like(sd["1.weight"], float("nan"))
    torch.save({"model": sd}, tmp_path / "diverged.pth")
    with pytest.raises(WeightsNotLoadedError, match=r"1 tensors hold NaN or infinity after loading \(e.g. 1.weight\)"):
        GNCheckpointer(_model(), str(tmp_path)).load_for_evaluation(str(tmp_path / "diverged.pth"))


def test_evaluation_with_good_weights_loads_them(tmp_path):
    donor = _model()
    with torch.no_grad():
        for p in donor.parameters():
            p.add_(1.0)
    torch.save({"model": donor.state_dict()}, tmp_path / "model_final.pth")
    model = _model()
    report = GNCheckpointer(model, str(tmp_path)).load_for_evaluation(str(tmp_path / "model_final.pth"))
    assert report.loaded == report.model_tensors == 6
    for a, b in zip(model.state_dict().values(), donor.state_dict().values()):
        assert torch.equal(a, b)


def test_directory_as_model_weights_is_named(tmp_path):
    torch.save({"model": _model().state_dict()}, tmp_path / "model_final.pth")
    with pytest.raises(IsADirectoryError, match="is a directory, not a weights file.*model_final.pth"):
        GNCheckpointer(_model(), str(tmp_path / "x")).load_for_evaluation(str(tmp_path))


# -- last_checkpoint ------------------------------------------------------------------------------

def _run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    ckpt = GNCheckpointer(_model(), str(run))
    ckpt.save("model_0000009")
    ckpt.save("model_0000019")
    return run


@pytest.mark.parametrize("content,problem", [
    (b"\xff\xfe\x00garbage\x9c", "is not text"),
    (b"", "is empty"),
    (b"   \n", "is empty"),
    (b"model_0000029.pth", "names 'model_0000029.pth', which does not exist"),
], ids=["garbage", "empty", "blank", "dangling"])
def test_damaged_last_checkpoint_falls_back_to_newest_readable(tmp_path, caplog, content, problem):
    run = _run_dir(tmp_path)
    os.utime(run / "model_0000009.pth", (1, 1))  # the older one
    (run / "last_checkpoint").write_bytes(content)
    ckpt = GNCheckpointer(_model(), str(run))
    with caplog.at_level("WARNING"):
        ckpt.resume_or_load("", resume=True)
    text = caplog.text
    assert f"{run / 'last_checkpoint'} {problem}" in text
    assert f"resuming from the newest readable checkpoint, {run / 'model_0000019.pth'}" in text


def test_fallback_skips_unreadable_checkpoints(tmp_path, caplog):
    run = _run_dir(tmp_path)
    os.utime(run / "model_0000009.pth", (1, 1))
    (run / "model_0000019.pth").write_bytes(b"half a file")  # the newest is damaged
    (run / "last_checkpoint").write_bytes(b"")
    with caplog.at_level("WARNING"):
        GNCheckpointer(_model(), str(run)).resume_or_load("", resume=True)
    assert "Skipping unreadable checkpoint" in caplog.text
    assert f"checkpoint, {run / 'model_0000009.pth'}" in caplog.text


def test_damaged_last_checkpoint_without_any_readable_checkpoint_fails(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last_checkpoint").write_bytes(b"\x00\x01")
    with pytest.raises(ValueError, match="is not text, and no readable checkpoint"):
        GNCheckpointer(_model(), str(run)).resume_or_load("", resume=True)


@pytest.mark.parametrize("pointer", ["absolute", "relative"])
def test_last_checkpoint_outside_output_dir_is_refused(tmp_path, pointer):
    other = _run_dir(tmp_path)  # another run's folder, with real checkpoints
    mine = tmp_path / "mine"
    mine.mkdir()
    target = str(other / "model_0000019.pth") if pointer == "absolute" else "../run/model_0000019.pth"
    (mine / "last_checkpoint").write_text(target)
    with pytest.raises(ValueError, match="points outside OUTPUT_DIR.*MODEL.WEIGHTS without --resume"):
        GNCheckpointer(_model(), str(mine)).resume_or_load("", resume=True)
    # given explicitly, the same file loads
    GNCheckpointer(_model(), str(mine)).resume_or_load(str(other / "model_0000019.pth"), resume=False)


# -- a full disk ----------------------------------------------------------------------------------

@contextlib.contextmanager
def _small_disk(tmp_path, monkeypatch):
    """A 1 MiB tmpfs where mounting is permitted (a real ENOSPC from the kernel); otherwise a
    folder whose file writes raise OSError(ENOSPC) after 64 KiB, as the kernel's would."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    mounted = shutil.which("mount") and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode == 0
    if not mounted:
        import builtins

        real_open = builtins.open

        class Full:
            def __init__(self, f):
                self._f, self._n = f, 0

            def write(self, b):
                self._n += len(b)
                if self._n > 65536:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return self._f.write(b)

            def __getattr__(self, name):
                return getattr(self._f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._f.close()

        def fake_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            return Full(f) if str(file).startswith(str(mnt)) and "w" in mode else f

        monkeypatch.setattr(builtins, "open", fake_open)
    try:
        yield mnt, "tmpfs" if mounted else "injected ENOSPC"
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], check=False)


def test_full_disk_during_save_says_so_and_keeps_previous_checkpoint(tmp_path, monkeypatch):
    with _small_disk(tmp_path, monkeypatch) as (disk, how):
        small = nn.Linear(10, 10)
        ckpt = GNCheckpointer(small, str(disk))
        ckpt.save("model_0000004")  # fits
        big = nn.Linear(1000, 1000)  # 4 MB: does not fit
        big_ckpt = GNCheckpointer(big, str(disk))
        with pytest.raises(CheckpointSaveError) as info:
            big_ckpt.save("model_0000009")
        message = str(info.value)
        print(f"({how}) {message}")
        assert "no space left on device" in message
        assert f"{disk / 'model_0000004.pth'}, is kept" in message
        assert "--resume" in message
        assert info.value.errno == errno.ENOSPC
        assert (disk / "last_checkpoint").read_text() == "model_0000004.pth"
        assert sorted(os.listdir(disk)) == ["last_checkpoint", "model_0000004.pth"]  # no temporary left
        loaded = nn.Linear(10, 10)
        GNCheckpointer(loaded, str(disk)).resume_or_load("", resume=True)
        assert torch.equal(loaded.weight, small.weight)


def test_failed_save_stops_training_before_evaluation(tmp_path, monkeypatch):
    """The last checkpoint of a run cannot be written: training raises the save's error and the
    final evaluation (EvalHook.after_train) does not run; the other hooks still close."""
    from detectron2.engine import hooks

    from gn_detectron.engine.trainer import GNTrainer

    evaluated, closed = [], []

    class Failing(hooks.HookBase):
        def after_step(self):
            if self.trainer.iter == 1:
                raise CheckpointSaveError(errno.ENOSPC, "no space left on device (simulated)")

    class Closing(hooks.HookBase):
        def after_train(self):
            closed.append(self.trainer.iter)

    from detectron2.engine import TrainerBase

    trainer = GNTrainer.__new__(GNTrainer)  # the hook logic alone: no model, no data
    TrainerBase.__init__(trainer)
    trainer.register_hooks([Closing(), Failing(), hooks.EvalHook(0, lambda: evaluated.append(1) or {})])
    monkeypatch.setattr(GNTrainer, "run_step", lambda self: None)
    with pytest.raises(CheckpointSaveError):
        TrainerBase.train(trainer, 0, 2)
    assert closed == [1] and evaluated == []


# -- temporaries and the OUTPUT_DIR lock ------------------------------------------------------------

def test_temporaries_of_killed_saves_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".model_0000099.pth.tmp.{dead.pid}"
    stale.write_bytes(b"\0" * 1000)
    live = tmp_path / f".model_0000100.pth.tmp.{os.getpid()}"  # a save in progress
    live.write_bytes(b"\0")
    other = tmp_path / ".hidden"
    other.write_bytes(b"")
    assert remove_stale_temporaries(str(tmp_path)) == [str(stale)]
    assert not stale.exists() and live.exists() and other.exists()


def test_second_run_on_the_same_output_dir_is_refused(tmp_path):
    code = ("import sys, time; sys.path.insert(0, %r); from gn_detectron.engine.output_dir import "
            "lock_output_dir; lock_output_dir(%r); print('locked', flush=True); time.sleep(60)"
            % (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), str(tmp_path)))
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputDirInUseError, match=f"pid {holder.pid}.*set OUTPUT_DIR to another folder"):
            lock_output_dir(str(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the killed holder's lock: the folder is free again
    assert lock_output_dir(str(tmp_path))
    assert lock_output_dir(str(tmp_path))  # again in the same process: a no-op
