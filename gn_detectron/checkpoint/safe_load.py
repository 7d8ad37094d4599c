"""Reading weights files without executing code.

- ``.pkl`` (Detectron / detectron2 model zoo): a restricted unpickler that admits only what such
  files hold: dicts, lists, tuples, strings, numbers, numpy arrays and dtypes. Anything else
  (``os.system``, ``subprocess``, arbitrary classes) is refused before it can run.
- ``.pth`` / ``.pt`` / ``.bin``: ``torch.load(weights_only=True)``.
- ``.safetensors``: the safetensors format (no code at all).
A file that is truncated or is not a weights file gets an error naming the file and the problem.
"""
import io
import os
import pickle
import re
from typing import Any, Dict

import torch

__all__ = ["load_weights_file", "directory_message", "safe_pickle_load", "UnsafeCheckpointError", "CheckpointFileError"]


class CheckpointFileError(ValueError):
    """A weights file that cannot be read: truncated, empty, or not a checkpoint."""


class UnsafeCheckpointError(CheckpointFileError):
    """A weights file that would execute code (or build objects weights files never hold)."""


# (module, name) pairs a weights pickle may reference. numpy moved its core to numpy._core in
# 2.0; pickles name either. _codecs.encode rebuilds bytes in protocol-2 pickles.
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _WeightsUnpickler(pickle.Unpickler):
    def __init__(self, f, filename):
        super().__init__(f, encoding="latin1")
        self.filename = filename

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"{self.filename}: refused to load: the pickle references {module}.{name}, which a "
            "weights file never needs (it could run code). Only dicts, lists, strings, numbers and "
            "numpy arrays are allowed; convert the file to .safetensors or a state_dict .pth if it "
            "comes from a source you trust."
        )

    def persistent_load(self, pid):
        raise UnsafeCheckpointError(f"{self.filename}: refused to load: persistent ids are not allowed in a weights pickle")


def safe_pickle_load(filename: str) -> Any:
    """Unpickles ``filename`` admitting only the types weights pickles hold."""
    with open(filename, "rb") as f:
        data = f.read()
    if not data:
        raise CheckpointFileError(f"{filename}: the file is empty")
    try:
        return _WeightsUnpickler(io.BytesIO(data), filename).load()
    except UnsafeCheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise CheckpointFileError(f"{filename}: not a readable weights pickle (truncated or corrupt?): {e}") from e


# How torch's weights-only unpickler words a refusal, newest wording first: "Unsupported global:
# GLOBAL x.y was not an allowed global", "Trying to load unsupported GLOBAL x.y whose module x is
# blocked", "Trying to call reduce for unrecognized function f", "Can only create new object for
# nn.Parameter or classes allowlisted ... but got <class c>".
_REFUSAL_PATTERNS = (
    re.compile(r"GLOBAL\s+(\S+?)\s+(?:was not|whose module)", re.IGNORECASE),
    re.compile(r"reduce for unrecognized function\s+(.+?)(?:\s+which belongs|$)", re.IGNORECASE | re.MULTILINE),
    re.compile(r"allowlisted via `add_safe_globals` but got\s+(.+?)$", re.IGNORECASE | re.MULTILINE),
)


def _refused_global(message: str):
    """The global (module.name) that torch's weights-only unpickler refused, or None when
    ``message`` is not such a refusal."""
    for pattern in _REFUSAL_PATTERNS:
        match = pattern.search(message)
        if match:
            return match.group(1).strip()
    return None


def _unsafe_message(filename: str, name: str) -> str:
    # torch's own message goes on to suggest weights_only=False: the one thing to avoid here.
    return (f"{filename}: refused to load: the file tries to run code or build arbitrary objects when "
            f"unpickled (it references {name}); a weights file holds only tensors, numbers, strings and "
            "containers. Nothing from the file was executed. Use a checkpoint saved as a state_dict "
            "(torch.save(model.state_dict(), ...)) or .safetensors from a source you trust.")


def directory_message(path: str) -> str:
    """What to say when a directory is given where a weights file is expected."""
    try:
        found = sorted(f for f in os.listdir(path) if f.endswith((".pth", ".pkl", ".safetensors")))
    except OSError:
        found = []
    hint = (f"; it holds {', '.join(found[:5])}{' ...' if len(found) > 5 else ''}: give one of them, e.g. "
            f"{os.path.join(path, 'model_final.pth' if 'model_final.pth' in found else found[-1])}"
            if found else "; give the path of a .pth, .pkl or .safetensors file")
    return f"{path} is a directory, not a weights file{hint}"


def _without_torch_advice(message: str) -> str:
    """torch's weights-only error text without its advice to load with weights_only=False."""
    lines = [line for line in message.splitlines() if "weights_only" not in line and line.strip()]
    return " ".join(line.strip() for line in lines)[:500] or "unreadable"


def load_weights_file(filename: str) -> Dict[str, Any]:
    """Reads a weights file by its extension, executing no code. Returns what the file holds (a
    dict for every supported format)."""
    if os.path.isdir(filename):
        raise IsADirectoryError(directory_message(filename))
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"{filename}: no such weights file")
    if filename.endswith(".pkl"):
        data = safe_pickle_load(filename)
    elif filename.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            data = {"model": load_file(filename)}
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointFileError(f"{filename}: not a readable safetensors file: {e}") from e
    else:
        try:
            data = torch.load(filename, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            name = _refused_global(str(e))
            if name is not None:
                raise UnsafeCheckpointError(_unsafe_message(filename, name)) from None
            raise CheckpointFileError(
                f"{filename}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                f"{_without_torch_advice(str(e))}") from None
        except Exception as e:  # the loader raises many types on damaged files
            raise CheckpointFileError(
                f"{filename}: not a readable PyTorch checkpoint (truncated or corrupt?): {type(e).__name__}: "
                f"{_without_torch_advice(str(e))}") from e
    if not isinstance(data, dict):
        raise CheckpointFileError(f"{filename}: expected a dict of weights, found {type(data).__name__}")
    return data
