"""Loading of the compiled extension ``gn_detectron._C``, which registers the
``torch.ops.gn_detectron`` operators and their CPU (and CUDA) kernels."""
import functools
import warnings

__all__ = ["load_extension", "extension_error", "has_kernel", "kernel_device_types"]

_error = None


@functools.lru_cache(maxsize=None)
def load_extension():
    """Returns the extension module, or None (with one warning) when it cannot be imported."""
    global _error
    try:
        from gn_detectron import _C  # noqa: F401  (importing registers the operators)
    except ImportError as e:  # missing build, or built against another torch
        _error = str(e)
        warnings.warn(
            "gn_detectron: the compiled extension could not be loaded ({}); group_norm falls back "
            "to torch.nn.functional.group_norm (PyTorch's kernels). Build it against the torch you "
            "run: in a checkout, `make build`; into your own environment, `pip install "
            "--no-build-isolation .` (or `-e .`; see the README's \"Install into an existing "
            "environment\").".format(e),
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return _C


def extension_error():
    """The import error of the extension, or None if it loaded."""
    load_extension()
    return _error


@functools.lru_cache(maxsize=None)
def has_kernel(device_type: str) -> bool:
    """Whether the extension registered a kernel of ``group_norm_fwd`` for this device type
    ('cpu', 'cuda', ...)."""
    import torch

    if load_extension() is None:
        return False
    if device_type == "meta":  # served by the fake kernel
        return True
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if key is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("gn_detectron::group_norm_fwd", key)


def kernel_device_types() -> frozenset:
    """The device types ('cpu', 'cuda', 'meta') that the extension's kernels serve."""
    return frozenset(d for d in ("cpu", "cuda", "meta") if has_kernel(d))
