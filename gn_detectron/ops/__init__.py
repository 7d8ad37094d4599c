"""Operators: ``group_norm`` (the functional op) and ``backend_info``."""
from .backend import backend_info
from .group_norm import FUSED_ACTIVATIONS, group_norm

__all__ = ["group_norm", "backend_info", "FUSED_ACTIVATIONS"]
