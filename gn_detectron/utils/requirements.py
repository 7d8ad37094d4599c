"""detectron2 as a requirement that pip cannot install: found or not, and what to do about it.

detectron2 is not published on PyPI, so it cannot be one of the package's declared
dependencies. The operator (``gn_detectron.ops``) and the layers need only torch; the detectron2
integration (``gn_detectron.modeling``, ``.engine``, ``add_gn_config``, the tools) checks for it
here and, when it is missing, says how to get it.
"""
import importlib.util
import sys

__all__ = ["DETECTRON2_MISSING", "detectron2_available", "require_detectron2"]

DETECTRON2_MISSING = """\
{what} needs detectron2, which is not installed in this Python environment ({python}).
detectron2 is not on PyPI, so installing gn_detectron with pip cannot bring it. Either:
  - use an environment with an existing detectron2 install (e.g. built from source:
    https://detectron2.readthedocs.io/en/latest/tutorials/install.html), or
  - from a gn_detectron checkout, install detectron2 0.7.2 into this environment (its torch is
    kept): `bash tools/setup_env.sh --detectron2-only`, or create the project's own .venv with
    everything: `make setup` (see the README, "Install into an existing environment").
gn_detectron.ops and gn_detectron.layers work without detectron2."""


def detectron2_available() -> bool:
    """Whether ``detectron2`` can be found on the path (without importing it)."""
    return importlib.util.find_spec("detectron2") is not None  # uses sys.modules when imported


def require_detectron2(what: str = "gn_detectron's detectron2 integration") -> None:
    """Raises ``ModuleNotFoundError`` (``name="detectron2"``) with the way to get detectron2 when it
    is not installed; does nothing when it is."""
    if not detectron2_available():
        raise ModuleNotFoundError(DETECTRON2_MISSING.format(what=what, python=sys.executable),
                                  name="detectron2")
