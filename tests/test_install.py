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
import warnings

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
    machine too, where this test would otherwise compile the CUDA kernels for minutes). About 4
    minutes of CPU time; the timeout leaves room for a machine shared with other jobs."""
    v = fresh_venv
    proc, seconds = run([v.python, "-m", "pip", "install", "--no-build-isolation", "-v", v.src],
                        env=clean_env(GN_DETECTRON_CPU_ONLY="1"), cwd=v.root, timeout=1800)
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


# ---------------------------------------------------------------------------------------------
# Fast: the build plan, the import, the entry points' behaviour
# ---------------------------------------------------------------------------------------------
def load_setup_py():
    spec = importlib.util.spec_from_file_location("gn_detectron_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() runs only as __main__
    return module


def fake_torch(gpu, cuda="13.0"):
    return types.SimpleNamespace(__version__="2.14.1", cuda=types.SimpleNamespace(is_available=lambda: gpu),
                                 version=types.SimpleNamespace(cuda=cuda))


def fake_toolkit(root):
    os.makedirs(os.path.join(root, "bin"))
    os.makedirs(os.path.join(root, "include"))
    open(os.path.join(root, "bin", "nvcc"), "w").close()
    open(os.path.join(root, "include", "cuda_runtime.h"), "w").close()
    return str(root)


def test_cuda_kernels_follow_detectron2_convention(tmp_path, monkeypatch):
    setup_py = load_setup_py()
    home = fake_toolkit(tmp_path / "cuda")
    monkeypatch.setenv("CUDA_HOME", home)
    plan = setup_py.cuda_build_plan
    # no GPU: skipped unless FORCE_CUDA=1, with the reason
    assert plan(fake_torch(gpu=False), {})[0] is None
    assert "FORCE_CUDA" in plan(fake_torch(gpu=False), {})[1]
    assert plan(fake_torch(gpu=False), {"FORCE_CUDA": "1"}) == (home, f"FORCE_CUDA=1; CUDA toolkit {home}")
    assert plan(fake_torch(gpu=True), {})[0] == home
    # GN_DETECTRON_CPU_ONLY wins; a torch without CUDA builds no CUDA kernels
    assert plan(fake_torch(gpu=True), {"GN_DETECTRON_CPU_ONLY": "1", "FORCE_CUDA": "1"})[0] is None
    assert plan(fake_torch(gpu=True, cuda=None), {})[0] is None
    with pytest.raises(SystemExit, match="build without CUDA"):
        plan(fake_torch(gpu=False, cuda=None), {"FORCE_CUDA": "1"})
    # FORCE_CUDA=1 without a toolkit fails at once, naming CUDA_HOME
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "nowhere"))
    with pytest.raises(SystemExit, match="CUDA_HOME"):
        plan(fake_torch(gpu=False), {"FORCE_CUDA": "1"})


def test_cuda_toolkit_is_not_taken_from_a_wrapper_script(tmp_path, monkeypatch):
    """A ``nvcc`` wrapper in /usr/local/bin made torch guess /usr/local as the toolkit root (and
    the link fail with ``cannot find -lcudart``): the root must hold the toolkit's headers."""
    setup_py = load_setup_py()
    wrapper_bin = tmp_path / "local" / "bin"
    wrapper_bin.mkdir(parents=True)
    (wrapper_bin / "nvcc").write_text("#!/bin/sh\nexec /elsewhere/nvcc \"$@\"\n")
    (wrapper_bin / "nvcc").chmod(0o755)
    for var in ("CUDA_HOME", "CUDA_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", str(wrapper_bin))
    found = setup_py.find_cuda_toolkit()
    assert found != str(tmp_path / "local")
    assert found is None or setup_py.is_cuda_toolkit(found)
    monkeypatch.setenv("CUDA_HOME", "/opt/my-cuda")
    assert setup_py.find_cuda_toolkit() == "/opt/my-cuda"  # an explicit CUDA_HOME is taken as given


def python_in_checkout(script, **env):
    """Runs ``script`` with this environment's python and this checkout first on the path."""
    full_env = clean_env(PYTHONPATH=ROOT, **env)
    full_env.pop("PYTHONWARNINGS", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=full_env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # a fresh interpreter importing torch and detectron2
def test_import_registers_builders_and_datasets_only():
    pytest.importorskip("detectron2")
    proc = python_in_checkout("""
        import sys
        import gn_detectron
        from detectron2.data import DatasetCatalog
        from detectron2.modeling import BACKBONE_REGISTRY
        from detectron2.modeling.roi_heads import ROI_BOX_HEAD_REGISTRY, ROI_MASK_HEAD_REGISTRY
        assert gn_detectron.__file__.startswith(%r), gn_detectron.__file__
        for registry, name in ((BACKBONE_REGISTRY, "build_gn_resnet_fpn_backbone"),
                               (BACKBONE_REGISTRY, "build_gn_resnet_backbone"),
                               (ROI_BOX_HEAD_REGISTRY, "GNFastRCNNConvFCHead"),
                               (ROI_MASK_HEAD_REGISTRY, "GNMaskRCNNConvUpsampleHead")):
            registry.get(name)
        assert {"shapes_train", "shapes_val", "shapes_train_tiny"} <= set(DatasetCatalog.list())
        heavy = [m for m in ("gn_detectron.engine", "gn_detectron.checkpoint", "detectron2.engine",
                             "detectron2.evaluation", "detectron2.model_zoo", "matplotlib") if m in sys.modules]
        assert not heavy, heavy
        print("OK")
    """ % ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stdout + proc.stderr


def test_without_detectron2_the_op_works_and_the_integration_says_how_to_get_it():
    proc = python_in_checkout("""
        import sys
        sys.modules["detectron2"] = None  # as if not installed
        import torch
        import gn_detectron
        x = torch.randn(2, 8, 4, 4)
        y = gn_detectron.ops.group_norm(x, 2)
        assert torch.allclose(y, torch.nn.functional.group_norm(x, 2), atol=1e-5)
        for attempt in (lambda: __import__("gn_detectron.modeling"), lambda: gn_detectron.add_gn_config):
            try:
                attempt()
            except ModuleNotFoundError as e:
                assert e.name == "detectron2"
                assert "not on PyPI" in str(e) and "tools/setup_env.sh --detectron2-only" in str(e), str(e)
            else:
                raise AssertionError("no error without detectron2")
        print("OK")
    """)
    assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stdout + proc.stderr


def test_known_third_party_warnings_are_filtered_and_no_others():
    import torch

    from gn_detectron.utils.warnings import filter_third_party_warnings

    def square(x):
        return x * x

    with warnings.catch_warnings(record=True) as before:
        warnings.simplefilter("always")
        torch.jit.script(square)
    assert any("torch.jit.script` is deprecated" in str(w.message) for w in before)  # can fail
    with warnings.catch_warnings(record=True) as after:
        warnings.simplefilter("always")
        filter_third_party_warnings()
        torch.jit.script(square)
        warnings.warn("gn_detectron: a warning of our own")
        warnings.warn("some other library's warning", UserWarning)
        warnings.warn("`torch.jit.script` is deprecated, says someone else", FutureWarning)
    messages = [str(w.message) for w in after]
    assert messages == ["gn_detectron: a warning of our own", "some other library's warning",
                        "`torch.jit.script` is deprecated, says someone else"], messages


@pytest.mark.slow  # a fresh interpreter importing torch and detectron2
def test_tools_filter_warnings_from_the_first_import():
    """The tools set GN_DETECTRON_FILTER_WARNINGS=1 before ``import gn_detectron``, whose
    import of detectron2 issues the first known warnings."""
    pytest.importorskip("detectron2")
    proc = python_in_checkout("""
        import warnings
        import gn_detectron
        warnings.warn("gn_detectron: a warning of our own")
    """, GN_DETECTRON_FILTER_WARNINGS="1")
    assert proc.returncode == 0, proc.stderr
    assert "a warning of our own" in proc.stderr and "deprecated" not in proc.stderr, proc.stderr


def test_build_model_falls_back_to_the_cpu_with_one_log_line(caplog):
    pytest.importorskip("detectron2")
    import torch
    from detectron2.config import get_cfg

    import gn_detectron

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: nothing to fall back from")
    cfg = get_cfg()
    gn_detectron.add_gn_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "shapes", "mask_rcnn_gn.yaml"))
    assert cfg.MODEL.DEVICE == "cuda"
    cfg.freeze()
    with caplog.at_level("INFO"):
        model = gn_detectron.build_model(cfg)
    assert model.device.type == "cpu" and cfg.MODEL.DEVICE == "cuda"
    lines = [r.getMessage() for r in caplog.records if "no GPU found" in r.getMessage()]
    assert len(lines) == 1, lines


def test_cpu_threads_per_process(monkeypatch):
    pytest.importorskip("detectron2")
    launch_module = importlib.import_module("gn_detectron.engine.launch")

    monkeypatch.setattr(launch_module, "available_cores", lambda: 8)
    assert launch_module.cpu_threads_per_process(2, {})[0] == 4
    assert launch_module.cpu_threads_per_process(3, {})[0] == 2
    assert launch_module.cpu_threads_per_process(16, {})[0] == 1
    threads, reason = launch_module.cpu_threads_per_process(2, {"OMP_NUM_THREADS": "3"})
    assert threads == 3 and "OMP_NUM_THREADS=3" in reason
    with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
        launch_module.cpu_threads_per_process(2, {"OMP_NUM_THREADS": "many"})


@pytest.mark.parametrize("max_to_keep,expected", [
    (0, ["model_final.pth"]),
    (1, ["model_0000005.pth", "model_final.pth"]),
    (-1, ["model_0000002.pth", "model_0000005.pth", "model_final.pth"]),
])
def test_periodic_checkpointer_keeps_what_is_asked(tmp_path, max_to_keep, expected):
    pytest.importorskip("detectron2")
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.engine import hooks

    from gn_detectron.engine.hooks import keep_periodic_checkpoints

    checkpointer = DetectionCheckpointer(torch.nn.Linear(2, 2), str(tmp_path))
    (hook,) = keep_periodic_checkpoints([hooks.PeriodicCheckpointer(checkpointer, 3)], max_to_keep)
    hook.trainer = types.SimpleNamespace(max_iter=7, iter=0)
    hook.before_train()
    seen = []
    for it in range(7):
        hook.trainer.iter = it
        hook.after_step()
        seen.append(sorted(f for f in os.listdir(tmp_path) if f.endswith(".pth")))
    assert seen[5][-1] == "model_0000005.pth"  # while training, the latest one is there to resume from
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith(".pth")) == expected
    assert open(tmp_path / "last_checkpoint").read().strip() == "model_final.pth"


def test_shapes_config_keeps_only_the_final_checkpoint():
    pytest.importorskip("detectron2")
    from detectron2.config import get_cfg

    import gn_detectron

    cfg = get_cfg()
    gn_detectron.add_gn_config(cfg)
    assert cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP == -1  # detectron2's behaviour by default
    cfg.merge_from_file(os.path.join(ROOT, "configs", "shapes", "mask_rcnn_gn.yaml"))
    assert cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP == 0
