"""The known, harmless warnings of the libraries under gn_detectron, filtered in its entry points.

Every command of the stack prints the same few warnings (torch's deprecation of
``torch.jit.script``, which detectron2 calls at import; setuptools' deprecation of
``pkg_resources``, which ``detectron2.model_zoo`` imports; ...), so that a user cannot tell a
warning that matters from noise. ``filter_third_party_warnings()`` silences exactly those, matched
by category, message and the module that issues them; gn_detectron's own warnings and any other
warning still show. ``import gn_detectron`` calls it first thing when the environment variable
``GN_DETECTRON_FILTER_WARNINGS`` is "1", which the tools (``tools/train_net.py``,
``tools/visualize.py``) set unless it is set already (``GN_DETECTRON_FILTER_WARNINGS=0`` shows
every warning); the variable reaches the processes they spawn. A library user may call it too.
"""
import logging
import warnings

__all__ = ["KNOWN_THIRD_PARTY_WARNINGS", "filter_third_party_warnings"]

# (category, message regex (matched at the start), issuing module regex, why it is harmless here)
KNOWN_THIRD_PARTY_WARNINGS = (
    (FutureWarning, r"`torch\.jit\.script` is deprecated", r"torch\.jit",
     "detectron2 scripts a few helpers when imported; nothing of gn_detectron depends on it"),
    (UserWarning, r"pkg_resources is deprecated as an API", r"detectron2\.",
     "detectron2.model_zoo imports pkg_resources; setuptools<81 (a dependency) still ships it"),
    (UserWarning, r"The given NumPy array is not writable", r"detectron2\.data",
     "detectron2's data loader wraps read-only arrays and never writes to them"),
    (UserWarning, r"torch\.meshgrid: in an upcoming release", r"torch\.functional",
     "detectron2's anchor generator calls meshgrid with the default indexing, which it relies on"),
)

# Records of third-party loggers (logger name, message start) that are noise in the same way.
KNOWN_THIRD_PARTY_LOG_RECORDS = (
    # torch.utils.cpp_extension, imported by detectron2's environment report on a machine without a
    # GPU, guesses a CUDA root; gn_detectron compiles nothing at run time.
    ("torch.utils.cpp_extension", "No CUDA runtime is found"),
    # detectron2 asks torch.fx.is_fx_tracing() in its layers; torch advises another function.
    ("torch.fx._symbolic_trace", "is_fx_tracing will return true"),
)


class _DropKnownRecords(logging.Filter):
    def __init__(self, prefixes):
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record):
        return not str(record.msg).startswith(self.prefixes)


def filter_third_party_warnings() -> None:
    """Ignores the warnings of ``KNOWN_THIRD_PARTY_WARNINGS`` and drops the log records of
    ``KNOWN_THIRD_PARTY_LOG_RECORDS`` in this process. Idempotent (``warnings.filterwarnings``
    replaces an identical filter; the log filter is added once)."""
    for category, message, module, _why in KNOWN_THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    by_logger = {}
    for name, prefix in KNOWN_THIRD_PARTY_LOG_RECORDS:
        by_logger.setdefault(name, []).append(prefix)
    for name, prefixes in by_logger.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownRecords) for f in logger.filters):
            logger.addFilter(_DropKnownRecords(prefixes))
