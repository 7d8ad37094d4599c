"""Small helpers of the package's entry points: the detectron2 requirement and the filter of
known third-party warnings."""
from .requirements import DETECTRON2_MISSING, detectron2_available, require_detectron2
from .warnings import KNOWN_THIRD_PARTY_WARNINGS, filter_third_party_warnings

__all__ = ["DETECTRON2_MISSING", "detectron2_available", "require_detectron2",
           "KNOWN_THIRD_PARTY_WARNINGS", "filter_third_party_warnings"]
