"""Which implementation serves which device and dtype."""
import torch

from ._extension import extension_error, has_kernel, load_extension

__all__ = ["backend_info"]

_DTYPES = ("float32", "float64", "float16", "bfloat16")


def backend_info() -> dict:
    """Reports the implementation behind ``gn_detectron.ops.group_norm`` on each device.

    Returns a dict::

        {"extension": "gn_detectron._C (cpu+cuda kernels, sm 8.0;9.0)" or the import error,
         "build": {...} or None,
         "devices": {"cpu": {"float32": "gn_detectron", ...}, "cuda": {...}}}

    where each entry is ``"gn_detectron"`` (the plugin's kernel) or ``"aten"`` (fallback to
    ``torch.nn.functional.group_norm``). CUDA is listed when torch was built with CUDA.
    """
    ext = load_extension()
    build = dict(ext.build_info()) if ext is not None else None
    if ext is None:
        summary = f"not loaded: {extension_error()}"
    else:
        kinds = "cpu+cuda" if build.get("cuda") else "cpu"
        archs = f", CUDA archs {build['cuda_archs']}" if build.get("cuda") else ""
        summary = f"gn_detectron._C ({kinds} kernels{archs}, built against torch {build['torch_version']})"
    devices = {}
    for dev in ("cpu", "cuda"):
        if dev == "cuda" and torch.version.cuda is None:
            continue
        impl = "gn_detectron" if has_kernel(dev) else "aten"
        devices[dev] = {dt: impl for dt in _DTYPES}
    if "cuda" in devices:
        devices["cuda"]["available"] = torch.cuda.is_available()
    return {"extension": summary, "build": build, "devices": devices, "torch": torch.__version__}
