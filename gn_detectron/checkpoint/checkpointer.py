"""``GNCheckpointer``: detectron2's ``DetectionCheckpointer`` with a clear account of
fine-tuning to another number of classes."""
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["GNCheckpointer", "CLASS_DEPENDENT_PREFIXES"]

# Parameters whose shape depends on the number of classes in detectron2's R-CNN heads.
CLASS_DEPENDENT_PREFIXES = (
    "roi_heads.box_predictor.cls_score.",
    "roi_heads.box_predictor.bbox_pred.",
    "roi_heads.mask_head.predictor.",
    "roi_heads.keypoint_head.score_lowres.",
)


class GNCheckpointer(DetectionCheckpointer):
    """Loads detectron2 checkpoints, Detectron (Caffe2) pickles and converted backbones like
    ``DetectionCheckpointer``. When the checkpoint was trained for another number of classes,
    the class-dependent layers keep their fresh initialisation and one log line says so (instead
    of one warning per tensor)."""

    def _log_incompatible_keys(self, incompatible):
        class_dependent = [s for s in incompatible.incorrect_shapes if s[0].startswith(CLASS_DEPENDENT_PREFIXES)]
        if class_dependent:
            names = ", ".join(k for k, _, _ in class_dependent)
            k, ckpt_shape, model_shape = class_dependent[0]
            self.logger.info(
                f"Fine-tuning to a different number of classes: re-initialised {len(class_dependent)} "
                f"class-dependent parameters ({names}); e.g. {k} is {tuple(ckpt_shape)} in the "
                f"checkpoint and {tuple(model_shape)} in the model."
            )
            incompatible = incompatible._replace(
                incorrect_shapes=[s for s in incompatible.incorrect_shapes if s not in class_dependent])
        super()._log_incompatible_keys(incompatible)
