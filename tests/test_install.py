"""Installing gn_detectron like a library.

The slow tests build the package with ``pip install --no-build-isolation`` into a fresh virtual
environment whose only packages are torch, torchvision and their own dependencies (made visible
from the running environment through a folder of links, so that no 5 GB copy is needed and
detectron2, fvcore, ... are not visible), then import it there and run the op. The build there is
the one a user without a GPU gets: C++ CPU kernels only (detectron2's convention).
"""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a fresh environment of a user holds besides the interpreter: torch, torchvision, and pip.
FRESH_ENV_PACKAGES = ("torch", "torchvision", "pip")


# ---------------------------------------------------------------------------------------------
# A fresh virtual environment with only torch and torchvision
# ---------------------------------------------------------------------------------------------
def _canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def dependency_closure(names):
    """The installed distributions of ``names`` and, recursively, their requirements (with the
    extras they ask for), as importlib.metadata distributions."""
    from importlib import metadata

    from packaging.requirements import Requirement

    found, todo = {}, [(n, ()) for n in names]
    while todo:
        name, extras = todo.pop()
        key = (_canonical(name), tuple(sorted(extras)))
        if key in found:
            continue
        dist = metadata.distribution(name)
        found[key] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("",) + tuple(extras)):
                todo.append((req.name, tuple(req.extras)))
    return list({_canonical(d.metadata["Name"]): d for d in found.values()}.values())


def make_torch_only_venv(path):
    """Creates a virtual environment at ``path`` whose site-packages sees only torch, torchvision,
    pip and their dependencies (linked from this environment's site-packages); returns its
    python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", path], check=True)
    python = os.path.join(path, "bin", "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    links = os.path.join(path, "torch-links")
    os.makedirs(links)
    for dist in dependency_closure(FRESH_ENV_PACKAGES):
        base = dist.locate_file("")
        tops = {str(f).split("/")[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops - {"__pycache__"}:
            if top.endswith(".pth") or os.path.lexists(os.path.join(links, top)):
                continue
            os.symlink(os.path.join(base, top), os.path.join(links, top))
    with open(os.path.join(site, "torch-links.pth"), "w") as f:
        f.write(links + "\n")
    return python


def clean_env(**extra):
    """The environment of a user's shell: none of this checkout's Python path settings."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "FORCE_CUDA", "GN_DETECTRON_CPU_ONLY", "CUDA_HOME")}
    env.update(extra)
    return env


def copy_source(dest):
    """This checkout's sources (no build outputs, no compiled extension) at ``dest``."""
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "output", "datasets", "*.so", "*.o", "*.egg-info", "__pycache__",
        ".pytest_cache", ".whl", ".cache"))
    return dest


def run(cmd, env, cwd, timeout):
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return proc, time.perf_counter() - t0


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("needs a C++ compiler")
    root = tmp_path_factory.mktemp("fresh")
    python = make_torch_only_venv(str(root / "venv"))
    src = copy_source(str(root / "src"))
    yield types.SimpleNamespace(python=python, src=src, root=str(root))
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def installed(fresh_venv):
    """``pip install --no-build-isolation`` of the package into the fresh environment, as the
    README says; a CPU-only build (no GPU here; GN_DETECTRON_CPU_ONLY keeps it so on a GPU
    machine too, where this test would otherwise compile the CUDA kernels for minutes)."""
    v = fresh_venv
    proc, seconds = run([v.python, "-m", "pip", "install", "--no-build-isolation", "-v", v.src],
                        env=clean_env(GN_DETECTRON_CPU_ONLY="1"), cwd=v.root, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    print(f"pip install --no-build-isolation (CPU kernels): {seconds:.0f} s")
    return types.SimpleNamespace(log=proc.stdout + proc.stderr, seconds=seconds, **vars(v))


# ---------------------------------------------------------------------------------------------
# Slow: the fresh environment
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_fresh_venv_has_only_torch(fresh_venv):
    script = textwrap.dedent("""
        import importlib.util, torch, torchvision
        missing = [m for m in ("detectron2", "fvcore", "iopath", "pycocotools", "cv2", "gn_detectron")
                   if importlib.util.find_spec(m) is None]
        print(",".join(missing))
    """)
    proc, _ = run([fresh_venv.python, "-c", script], clean_env(), fresh_venv.root, 120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "detectron2,fvcore,iopath,pycocotools,cv2,gn_detectron"


@pytest.mark.slow
def test_isolated_build_fails_fast_with_the_advice(fresh_venv):
    """Without --no-build-isolation pip would build against a torch of its own choosing: the
    build refuses at once and says what to run instead."""
    proc, seconds = run([fresh_venv.python, "-m", "pip", "install", fresh_venv.src],
                        clean_env(), fresh_venv.root, 300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "pip install --no-build-isolation ." in out, out[-3000:]
    assert not re.search(r"(Collecting|Downloading) torch\b", out), out[-3000:]
    assert seconds < 120, f"the isolated build took {seconds:.0f} s to fail"


@pytest.mark.slow
def test_installed_package_runs_the_op(installed):
    assert "CUDA kernels skipped: GN_DETECTRON_CPU_ONLY=1" in installed.log
    script = textwrap.dedent("""
        import importlib.metadata, importlib.util, os, sys
        import torch
        import torch.nn.functional as F
        import gn_detectron
        from gn_detectron.ops import backend_info, group_norm

        site = os.path.dirname(os.path.dirname(gn_detectron.__file__))
        assert site.startswith(sys.prefix) and site.endswith("site-packages"), gn_detectron.__file__
        assert gn_detectron.__version__ == importlib.metadata.version("gn_detectron")
        info = backend_info()
        assert info["extension"].startswith("gn_detectron._C (cpu kernels"), info
        assert info["devices"]["cpu"]["float32"] == "gn_detectron", info

        x = torch.randn(2, 64, 9, 7, dtype=torch.float64, requires_grad=True)
        w = torch.rand(64, dtype=torch.float64) + 0.5
        b = torch.randn(64, dtype=torch.float64)
        y = group_norm(x, 8, w, b, activation="relu")
        ref = F.relu(F.group_norm(x, 8, w, b))
        assert torch.allclose(y, ref, atol=1e-12), (y - ref).abs().max()
        g = torch.randn_like(y)
        (dx,) = torch.autograd.grad(y, x, g)
        (dx_ref,) = torch.autograd.grad(ref, x, g)
        assert torch.allclose(dx, dx_ref, atol=1e-10), (dx - dx_ref).abs().max()
        m = gn_detectron.GroupNorm(4, 16)
        assert m(torch.randn(1, 16, 5, 5)).shape == (1, 16, 5, 5)

        # the declared dependencies came with it
        for module in ("fvcore", "iopath", "pycocotools", "cv2", "tqdm", "safetensors", "pkg_resources"):
            assert importlib.util.find_spec(module) is not None, module
        # detectron2 cannot come from pip: the integration says where to get it
        assert importlib.util.find_spec("detectron2") is None
        try:
            import gn_detectron.modeling
        except ModuleNotFoundError as e:
            assert e.name == "detectron2", e.name
            msg = str(e)
            assert "not on PyPI" in msg and "setup_env.sh" in msg and "existing" in msg, msg
        else:
            raise AssertionError("gn_detectron.modeling imported without detectron2")
        print("OK")
    """)
    proc, _ = run([installed.python, "-c", script], clean_env(), installed.root, 300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout + proc.stderr
