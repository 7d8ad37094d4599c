"""Build of gn_detectron and its compiled extension ``gn_detectron._C``.

The C++ CPU kernels are always built. The CUDA kernels are built as well when a CUDA toolkit is
found (``CUDA_HOME`` or ``/usr/local/cuda``), also on a machine without a GPU; set
``GN_DETECTRON_CPU_ONLY=1`` to skip them. ``TORCH_CUDA_ARCH_LIST`` chooses the GPU architectures
(default ``8.0;9.0``: A100, H100/H200).
"""
import glob
import os
import platform

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("gn_detectron", "csrc")
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def cuda_home():
    if os.environ.get("GN_DETECTRON_CPU_ONLY", "0") == "1":
        return None
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not home and os.path.exists("/usr/local/cuda/bin/nvcc"):
        home = "/usr/local/cuda"
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return home
    return None


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


def extensions():
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = sorted(glob.glob(os.path.join(CSRC, "*.cpp")) + glob.glob(os.path.join(CSRC, "cpu", "*.cpp")))
    cxx = ["-O3", "-fopenmp"] + cpu_arch_flags()  # the C++ standard: torch's choice
    define_macros = []
    home = cuda_home()
    if home is None:
        return [CppExtension("gn_detectron._C", sources, include_dirs=[os.path.join(ROOT, CSRC)],
                             extra_compile_args={"cxx": cxx},
                             extra_link_args=["-fopenmp"], define_macros=define_macros)]

    os.environ["CUDA_HOME"] = home
    archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    sources += sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
    define_macros += [("GN_WITH_CUDA", None), ("GN_CUDA_ARCHS", '"%s"' % archs)]
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo",
            "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
            "-U__CUDA_NO_BFLOAT16_CONVERSIONS__"]
    return [CUDAExtension("gn_detectron._C", sources, include_dirs=[os.path.join(ROOT, CSRC)],
                          extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                          extra_link_args=["-fopenmp"], define_macros=define_macros)]


def build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=True)


setup(
    name="gn_detectron",
    version="0.1.0",
    description="Fast Group Normalization for Detectron2: CPU and CUDA kernels, a registered norm "
                "layer and training tools",
    packages=find_packages(include=["gn_detectron", "gn_detectron.*"]),
    package_data={"gn_detectron": ["csrc/*.h", "csrc/*.cpp", "csrc/*/*.cpp", "csrc/*/*.cu", "csrc/*/*.cuh"]},
    python_requires=">=3.10",
    install_requires=["torch>=2.4"],
    ext_modules=extensions(),
    cmdclass={"build_ext": build_ext_class()},
    zip_safe=False,
)
