"""``GNCheckpointer``: detectron2's ``DetectionCheckpointer`` that never executes code when it
reads weights, never leaves a half-written checkpoint, and explains fine-tuning to another number
of classes in one line."""
import os
from urllib.parse import parse_qs

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .safe_load import load_weights_file

__all__ = ["GNCheckpointer", "CLASS_DEPENDENT_PREFIXES", "atomic_write"]

# Parameters whose shape depends on the number of classes in detectron2's R-CNN heads.
CLASS_DEPENDENT_PREFIXES = (
    "roi_heads.box_predictor.cls_score.",
    "roi_heads.box_predictor.bbox_pred.",
    "roi_heads.mask_head.predictor.",
    "roi_heads.keypoint_head.score_lowres.",
)


def atomic_write(path, write):
    """Calls ``write(f)`` on a temporary file beside ``path``, flushes and fsyncs it, then renames
    it over ``path``: a reader sees the old file or the new one, never a partial one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


class GNCheckpointer(DetectionCheckpointer):
    """Loads detectron2 checkpoints, Detectron (Caffe2) pickles and converted backbones like
    ``DetectionCheckpointer``, with these differences:

    - weights files are read without executing code (:mod:`gn_detectron.checkpoint.safe_load`);
    - checkpoints and ``last_checkpoint`` are written atomically (temporary file, fsync, rename);
    - when the checkpoint was trained for another number of classes, the class-dependent layers
      keep their fresh initialisation and one log line says so.
    """

    def _load_file(self, filename):
        data = load_weights_file(filename)
        if filename.endswith(".pkl"):
            if "model" in data and "__author__" in data:
                self.logger.info("Reading a file from '{}'".format(data["__author__"]))
                return data
            # Detectron (Caffe2) model zoo pickle: detection models keep their weights in "blobs"
            if "blobs" in data:
                data = data["blobs"]
            data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        if "model" not in data:
            data = {"model": data}
        queries = parse_qs(self._parsed_url_during_load.query) if self._parsed_url_during_load else {}
        if queries.pop("matching_heuristics", "False") == ["True"]:
            data["matching_heuristics"] = True
        if queries:
            raise ValueError(f"{filename}: unsupported query {queries}")
        return data

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to {}".format(save_file))
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"),
                     lambda f: f.write(last_filename_basename.encode()))

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
