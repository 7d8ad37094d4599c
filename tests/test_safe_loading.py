"""Weights files are read without executing code; unreadable files get a clear message;
checkpoints are written atomically."""
import os
import pickle

import numpy as np
import pytest
import torch

from gn_detectron.checkpoint import CheckpointFileError, UnsafeCheckpointError, load_weights_file


class _Payload:
    """Unpickling this creates a file: what a malicious checkpoint would do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("ext", [".pkl", ".pth"])
def test_code_in_a_weights_file_is_refused(tmp_path, ext):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{ext}"
    payload = {"model": {"conv1_w": np.zeros(3, dtype=np.float32), "x": _Payload(str(marker))}}
    if ext == ".pkl":
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    else:
        torch.save(payload, path)
    with pytest.raises(UnsafeCheckpointError, match=str(path.name)):
        load_weights_file(str(path))
    assert not marker.exists()


class _SystemCall:
    def __reduce__(self):
        return (os.system, ("true",))


class _Opaque:
    """An arbitrary class: building it would import and run code of the file's choosing."""


@pytest.mark.parametrize("payload,global_name", [
    (lambda marker: _Payload(marker), "open"),            # builtins: "Unsupported global"
    (lambda marker: _SystemCall(), "system"),              # blocked module: "unsupported GLOBAL"
    (lambda marker: _Opaque(), "_Opaque"),                 # a class of its own
], ids=["builtins.open", "os.system", "class"])
def test_malicious_zip_pth_names_the_global_and_never_advises_weights_only_false(tmp_path, payload, global_name):
    """A zip-format .pth whose pickle calls code: refused by the weights-only unpickler, and the
    error says that the file tries to run code, names the global, does not call the file
    'truncated or corrupt', and carries no advice to retry with weights_only=False (not even in
    the exception chain)."""
    import zipfile

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "meta": payload(str(marker))}, path)
    assert zipfile.is_zipfile(path)
    # the payload reaches torch's weights-only refusal (not some earlier check of ours)
    with pytest.raises(pickle.UnpicklingError, match="(?i)global|reduce|allowlisted"):
        torch.load(path, weights_only=True)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_weights_file(str(path))
    message = str(info.value)
    assert "evil.pth" in message and "tries to run code" in message and global_name in message
    assert "corrupt" not in message
    chain, e = [], info.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    assert not any("weights_only=False" in text or "weights_only` argument" in text for text in chain)
    assert not marker.exists()


def test_directory_as_weights_file_is_named_as_such(tmp_path):
    (tmp_path / "model_final.pth").write_bytes(b"")
    with pytest.raises(IsADirectoryError, match="is a directory") as info:
        load_weights_file(str(tmp_path))
    assert "model_final.pth" in str(info.value)


def test_plain_pickles_load(tmp_path):
    path = tmp_path / "R-50-GN.pkl"
    blobs = {"conv1_w": np.random.rand(4, 3).astype(np.float32), "conv1_gn_s": np.ones(4, np.float32),
             "lr": 0.1, "names": ["a", "b"], "step": np.int64(3)}
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        with open(path, "wb") as f:
            pickle.dump({"blobs": blobs}, f, protocol=protocol)
        got = load_weights_file(str(path))["blobs"]
        np.testing.assert_array_equal(got["conv1_w"], blobs["conv1_w"])
        assert got["names"] == ["a", "b"] and got["step"] == 3


@pytest.mark.parametrize("ext", [".pkl", ".pth", ".safetensors"])
def test_truncated_or_foreign_files_name_the_file(tmp_path, ext):
    good = tmp_path / f"good{ext}"
    sd = {"w": torch.randn(64, 64)}
    if ext == ".pkl":
        with open(good, "wb") as f:
            pickle.dump({k: v.numpy() for k, v in sd.items()}, f)
    elif ext == ".pth":
        torch.save(sd, good)
    else:
        from safetensors.torch import save_file

        save_file(sd, str(good))
    data = good.read_bytes()
    truncated = tmp_path / f"truncated{ext}"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFileError, match="truncated"):
        load_weights_file(str(truncated))
    foreign = tmp_path / f"notes{ext}"
    foreign.write_text("this is not a checkpoint\n" * 10)
    with pytest.raises(CheckpointFileError, match="notes"):
        load_weights_file(str(foreign))
    empty = tmp_path / f"empty{ext}"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointFileError, match="empty"):
        load_weights_file(str(empty))


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        load_weights_file("/nonexistent/model.pth")


def test_atomic_write_keeps_old_file_when_interrupted(tmp_path):
    pytest.importorskip("detectron2")
    from gn_detectron.checkpoint.checkpointer import atomic_write

    path = tmp_path / "model_final.pth"
    torch.save({"model": {"w": torch.ones(3)}}, path)

    def interrupted(f):
        f.write(b"partial bytes")
        raise KeyboardInterrupt  # the process is stopped in the middle of the save

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(path), interrupted)
    assert torch.equal(load_weights_file(str(path))["model"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["model_final.pth"]  # no temporary left behind
