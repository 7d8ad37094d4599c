"""Build of gn_detectron and its compiled extension ``gn_detectron._C``.

Install into an environment that already has PyTorch, building against that torch:

    pip install --no-build-isolation .        # or -e . for a development install

The C++ CPU kernels are always built. The CUDA kernels follow detectron2's convention: they are
built when a GPU is visible (``torch.cuda.is_available()``) or ``FORCE_CUDA=1`` is set (to build
them on a machine without a GPU), with the CUDA toolkit of ``CUDA_HOME`` (or ``CUDA_PATH``, else
``/usr/local/cuda``, else the one of ``nvcc`` on ``PATH``). ``GN_DETECTRON_CPU_ONLY=1`` skips
them in any case. ``TORCH_CUDA_ARCH_LIST`` chooses the GPU architectures (default ``8.0;9.0``:
A100, H100/H200). One line of the build output says which kernels are built and why.
"""
import glob
import os
import platform
import re
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("gn_detectron", "csrc")
DEFAULT_CUDA_ARCHS = "8.0;9.0"
MIN_TORCH = (2, 4)

NO_TORCH = """
gn_detectron: building the extension needs PyTorch, but `import torch` failed in the build
environment ({python}): {error}

- If torch is installed in your environment, pip is building in an isolated environment that
  cannot see it (pip's default). Build against your own torch instead:
      pip install --no-build-isolation .        (or: pip install --no-build-isolation -e .)
  (setuptools >= 64 must be installed; `pip install ninja` makes the build faster.)
- Otherwise install torch first (https://pytorch.org/get-started/locally/), then run the command
  above.
The isolated build is refused on purpose: it would download another torch to build against,
whose ABI need not match the torch you run.
"""


def log(message):
    print(f"gn_detectron setup: {message}", file=sys.stderr, flush=True)


def read_version():
    with open(os.path.join(ROOT, "gn_detectron", "__init__.py")) as f:
        match = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M)
    return match.group(1)


def import_torch():
    """The installed torch, or exit with the advice of ``NO_TORCH``."""
    try:
        import torch
    except ImportError as e:
        sys.exit(NO_TORCH.format(python=sys.executable, error=e))
    version = tuple(int(p) for p in re.findall(r"\d+", torch.__version__)[:2])
    if version < MIN_TORCH:
        sys.exit(f"gn_detectron needs torch >= {'.'.join(map(str, MIN_TORCH))}; this environment has "
                 f"torch {torch.__version__}. Upgrade torch first, then build again.")
    return torch


def is_cuda_toolkit(home):
    return bool(home) and os.path.isfile(os.path.join(home, "bin", "nvcc")) and \
        os.path.isfile(os.path.join(home, "include", "cuda_runtime.h"))


def find_cuda_toolkit():
    """The CUDA toolkit root: ``CUDA_HOME`` or ``CUDA_PATH`` when set (taken as given), else
    ``/usr/local/cuda``, else the root of ``nvcc`` on ``PATH`` (links resolved); a root must hold
    ``bin/nvcc`` and ``include/cuda_runtime.h`` (a wrapper script such as ``/usr/local/bin/nvcc``
    does not make ``/usr/local`` a toolkit). None if there is none."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    candidates = ["/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    return next((home for home in candidates if is_cuda_toolkit(home)), None)


def cuda_build_plan(torch, environ=os.environ):
    """Whether to build the CUDA kernels: ``(cuda_home, reason)``, ``cuda_home`` None when they
    are skipped. Exits with a message when ``FORCE_CUDA=1`` asks for what cannot be built."""
    if environ.get("GN_DETECTRON_CPU_ONLY", "0") == "1":
        return None, "GN_DETECTRON_CPU_ONLY=1"
    force = environ.get("FORCE_CUDA", "0") == "1"
    has_gpu = torch.cuda.is_available()
    if not (force or has_gpu):
        return None, "no GPU is visible and FORCE_CUDA is not 1 (set FORCE_CUDA=1 to build them anyway)"
    if torch.version.cuda is None:
        if force:
            sys.exit(f"gn_detectron: FORCE_CUDA=1, but torch {torch.__version__} is a build without "
                     "CUDA: install a CUDA build of torch, or unset FORCE_CUDA.")
        return None, f"torch {torch.__version__} is a build without CUDA"
    home = find_cuda_toolkit()
    if home is None or not os.path.isfile(os.path.join(home, "bin", "nvcc")):
        where = f"CUDA_HOME={home} has no bin/nvcc" if home else "no CUDA toolkit (nvcc) was found"
        if force:
            sys.exit(f"gn_detectron: FORCE_CUDA=1, but {where}: set CUDA_HOME to the CUDA {torch.version.cuda} "
                     "toolkit's root (the folder with bin/nvcc), or unset FORCE_CUDA.")
        return None, f"a GPU is visible but {where} (set CUDA_HOME to the toolkit's root)"
    why = "FORCE_CUDA=1" if force else "a GPU is visible"
    return home, f"{why}; CUDA toolkit {home}"


def cpu_arch_flags():
    """AVX2/FMA for the CPU kernels when the building machine has them (GN_DETECTRON_CPU_FLAGS
    overrides, e.g. to an empty string for a portable build)."""
    if "GN_DETECTRON_CPU_FLAGS" in os.environ:
        return os.environ["GN_DETECTRON_CPU_FLAGS"].split()
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return []
    return ["-mavx2", "-mfma"] if (" avx2" in flags and " fma" in flags) else []


def extensions(torch):
    home, reason = cuda_build_plan(torch)
    # torch.utils.cpp_extension fixes its CUDA root when first imported: set it before (also when
    # the CUDA kernels are skipped, so that torch reports the right root rather than a guess).
    toolkit = home or find_cuda_toolkit()
    if toolkit and not os.environ.get("CUDA_HOME"):
        os.environ["CUDA_HOME"] = toolkit
    from torch.utils import cpp_extension

    sources = sorted(glob.glob(os.path.join(CSRC, "*.cpp")) + glob.glob(os.path.join(CSRC, "cpu", "*.cpp")))
    cxx = ["-O3", "-fopenmp"] + cpu_arch_flags()  # the C++ standard: torch's choice
    common = dict(include_dirs=[os.path.join(ROOT, CSRC)], extra_link_args=["-fopenmp"])
    if home is None:
        log(f"building the C++ CPU kernels only; CUDA kernels skipped: {reason}")
        return [cpp_extension.CppExtension("gn_detectron._C", sources, extra_compile_args={"cxx": cxx},
                                           **common)]

    cpp_extension.CUDA_HOME = home  # in case it was imported before with another guess
    archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    log(f"building the C++ CPU and the CUDA kernels for {archs} ({reason})")
    sources += sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo",
            "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
            "-U__CUDA_NO_BFLOAT16_CONVERSIONS__"]
    return [cpp_extension.CUDAExtension(
        "gn_detectron._C", sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc},
        define_macros=[("GN_WITH_CUDA", None), ("GN_CUDA_ARCHS", '"%s"' % archs)], **common)]


def install_requires():
    """The run-time dependencies pip installs. detectron2 is not among them: it is not on PyPI
    (see the README's "Install into an existing environment"). OpenCV is required only when no
    OpenCV distribution is installed, so that an existing ``opencv-python`` is not shadowed by a
    second ``cv2``."""
    from importlib import metadata

    requires = [
        f"torch>={'.'.join(map(str, MIN_TORCH))}",
        "numpy",
        "fvcore",          # detectron2's checkpointing and config, extended by GNCheckpointer
        "iopath",
        "pycocotools",     # masks of the shapes dataset, COCO evaluation
        "tqdm",
        "safetensors",     # MODEL.WEIGHTS in .safetensors
        "setuptools<81",   # detectron2.model_zoo imports pkg_resources
    ]
    opencv = ("opencv-python", "opencv-python-headless", "opencv-contrib-python",
              "opencv-contrib-python-headless")
    installed = []
    for name in opencv:
        try:
            metadata.version(name)
            installed.append(name)
        except metadata.PackageNotFoundError:
            pass
    requires.append(installed[0] if installed else "opencv-python-headless")
    return requires


EXTRAS = {
    "timm": ["timm", "safetensors"],
    "export": ["onnx", "onnxruntime", "onnxscript"],
    "test": ["pytest"],
}


if __name__ == "__main__":
    torch = import_torch()
    ext_modules = extensions(torch)  # first: it sets CUDA_HOME before cpp_extension is imported
    from torch.utils.cpp_extension import BuildExtension

    setup(
        name="gn_detectron",
        version=read_version(),
        description="Fast Group Normalization for Detectron2: CPU and CUDA kernels, a registered norm "
                    "layer and training tools",
        packages=find_packages(include=["gn_detectron", "gn_detectron.*"]),
        package_data={"gn_detectron": ["csrc/*.h", "csrc/*.cpp", "csrc/*/*.h", "csrc/*/*.cpp",
                                       "csrc/*/*.cu", "csrc/*/*.cuh"]},
        python_requires=">=3.10",
        install_requires=install_requires(),
        extras_require=EXTRAS,
        ext_modules=ext_modules,
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
        zip_safe=False,
    )
