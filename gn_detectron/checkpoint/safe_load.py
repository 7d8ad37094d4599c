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
from typing import Any, Dict

import torch

__all__ = ["load_weights_file", "safe_pickle_load", "UnsafeCheckpointError", "CheckpointFileError"]


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


def _first_line_with(text, word):
    return next((line.strip() for line in text.splitlines() if word in line), text.splitlines()[0])


def load_weights_file(filename: str) -> Dict[str, Any]:
    """Reads a weights file by its extension, executing no code. Returns what the file holds (a
    dict for every supported format)."""
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
            if "Unsupported global" in str(e) or "Unsupported class" in str(e):
                raise UnsafeCheckpointError(
                    f"{filename}: refused to load with weights_only=True: the file holds objects other "
                    f"than tensors and plain containers ({_first_line_with(str(e), 'Unsupported')})") from e
            raise CheckpointFileError(f"{filename}: not a readable PyTorch checkpoint (truncated or corrupt?): {e}") from e
        except Exception as e:  # the loader raises many types on damaged files
            raise CheckpointFileError(
                f"{filename}: not a readable PyTorch checkpoint (truncated or corrupt?): {type(e).__name__}: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointFileError(f"{filename}: expected a dict of weights, found {type(data).__name__}")
    return data
