"""``GNCheckpointer``: detectron2's ``DetectionCheckpointer`` that never executes code when it
reads weights, never leaves a half-written checkpoint, explains fine-tuning to another number
of classes in one line, resumes only from checkpoints of its own ``OUTPUT_DIR``, and refuses to
evaluate a model whose weights did not load."""
import errno
import glob
import logging
import os
import re
import shutil
from typing import NamedTuple
from urllib.parse import parse_qs

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .safe_load import CheckpointFileError, directory_message, load_weights_file

__all__ = ["GNCheckpointer", "CLASS_DEPENDENT_PREFIXES", "atomic_write", "CheckpointSaveError",
           "WeightsNotLoadedError", "LoadReport", "remove_stale_temporaries"]

_TMP_SUFFIX = ".tmp."
_STALE_TMP = re.compile(r"^\.(?P<name>.+)\.tmp\.(?P<pid>\d+)$")


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (e.g. the disk is full); the previous one is kept."""


class WeightsNotLoadedError(RuntimeError):
    """Evaluation was asked of a model whose weights did not load."""


class LoadReport(NamedTuple):
    """What the last ``load`` put into the model: ``loaded`` of the model's ``model_tensors``
    state_dict entries came from the checkpoint's ``checkpoint_tensors``."""

    path: str
    checkpoint_tensors: int
    model_tensors: int
    loaded: int
    wrong_shape: int
    unexpected: int

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
    tmp = os.path.join(directory, f".{os.path.basename(path)}{_TMP_SUFFIX}{os.getpid()}")
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(directory: str, logger=None) -> list:
    """Removes the temporary files that :func:`atomic_write` left in ``directory`` when its process
    was killed (``.NAME.tmp.PID`` whose PID no longer runs). Returns the removed paths."""
    removed = []
    for path in glob.glob(os.path.join(glob.escape(directory), f".*{_TMP_SUFFIX}*")):
        match = _STALE_TMP.match(os.path.basename(path))
        if not match or _pid_alive(int(match.group("pid"))):
            continue
        try:
            size = os.path.getsize(path)
            os.remove(path)
        except OSError:
            continue
        removed.append(path)
        (logger or logging.getLogger(__name__)).warning(
            f"Removed {path} ({size / 2**20:.1f} MiB), left by an interrupted save of "
            f"{match.group('name')} (process {match.group('pid')} no longer runs)")
    return removed


def _is_disk_full(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class GNCheckpointer(DetectionCheckpointer):
    """Loads detectron2 checkpoints, Detectron (Caffe2) pickles and converted backbones like
    ``DetectionCheckpointer``, with these differences:

    - weights files are read without executing code (:mod:`gn_detectron.checkpoint.safe_load`);
    - checkpoints and ``last_checkpoint`` are written atomically (temporary file, fsync, rename);
    - when the checkpoint was trained for another number of classes, the class-dependent layers
      keep their fresh initialisation and one log line says so;
    - a directory given as weights is named as such;
    - ``--resume`` reads ``last_checkpoint`` defensively: an empty, garbled or dangling one falls
      back to the newest readable checkpoint of ``save_dir`` with one warning, and one that points
      outside ``save_dir`` is refused (load such a file explicitly, through ``MODEL.WEIGHTS``);
    - a save that fails (a full disk) raises :class:`CheckpointSaveError` saying so, and keeps the
      previous checkpoint and ``last_checkpoint``;
    - :meth:`load_for_evaluation` refuses a model whose weights did not load;
    - :attr:`last_load` reports what the last load matched (:class:`LoadReport`).
    """

    last_load = None
    _preloaded = None  # (path, data) of a checkpoint already read while choosing what to resume

    # -- loading -------------------------------------------------------------------------------

    def load(self, path, *args, **kwargs):
        if path and os.path.isdir(path):
            raise IsADirectoryError(directory_message(path))
        if path and "://" not in path and not os.path.isfile(path.split("?")[0]):
            raise FileNotFoundError(f"Checkpoint {path} not found (MODEL.WEIGHTS or last_checkpoint)")
        self._loading_path = path
        return super().load(path, *args, **kwargs)

    def _load_model(self, checkpoint):
        checkpoint_tensors = len(checkpoint.get("model", {}))
        incompatible = super()._load_model(checkpoint)
        model_keys = self.model.state_dict().keys()
        missing = set(incompatible.missing_keys)
        self.last_load = LoadReport(
            path=getattr(self, "_loading_path", ""), checkpoint_tensors=checkpoint_tensors,
            model_tensors=len(model_keys), loaded=sum(k not in missing for k in model_keys),
            wrong_shape=len(incompatible.incorrect_shapes), unexpected=len(incompatible.unexpected_keys))
        return incompatible

    def load_for_evaluation(self, path: str, *, resume: bool = False):
        """Loads the weights of a model that is to be evaluated (``--eval-only``): ``path``, or
        with ``resume`` the last checkpoint of ``save_dir`` when there is one. Raises
        :class:`WeightsNotLoadedError` when there is nothing to load, when no tensor of the
        checkpoint fits the model, or when the loaded weights hold NaN or infinity: an evaluation
        of such a model measures a random or broken model, not the checkpoint."""
        if resume and self.has_checkpoint():
            path = self.get_checkpoint_file()
        if not path:
            raise WeightsNotLoadedError(
                "Nothing to evaluate: MODEL.WEIGHTS is empty, so the model would keep its random "
                "initialisation. Set MODEL.WEIGHTS to a trained checkpoint (e.g. "
                f"{os.path.join(self.save_dir or 'OUTPUT_DIR', 'model_final.pth')}), or add --resume to "
                "evaluate the last checkpoint of OUTPUT_DIR.")
        self.last_load = None
        self.load(path, checkpointables=[])
        report = self.last_load
        if report is None:  # a subclass or format that bypassed _load_model
            raise WeightsNotLoadedError(f"{path}: no weights were loaded into the model")
        if report.loaded == 0:
            raise WeightsNotLoadedError(
                f"{path}: none of its {report.checkpoint_tensors} tensors fits the model "
                f"({report.wrong_shape} have another shape, {report.unexpected} have names the model does "
                "not have), so the model would be evaluated with random weights. Use the config the "
                "checkpoint was trained with (--config-file, and the same MODEL.* overrides).")
        nonfinite = [k for k, t in self.model.state_dict().items()
                     if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if nonfinite:
            raise WeightsNotLoadedError(
                f"{path}: {len(nonfinite)} tensors hold NaN or infinity after loading (e.g. "
                f"{', '.join(nonfinite[:3])}): the checkpoint comes from a run that diverged or was "
                "damaged. Evaluate an earlier checkpoint of that run.")
        if report.loaded < report.model_tensors:
            self.logger.warning(
                f"Evaluating with {report.model_tensors - report.loaded} of the model's "
                f"{report.model_tensors} tensors not in {path} (they keep their initialisation).")
        return report

    # -- resuming ------------------------------------------------------------------------------

    def get_checkpoint_file(self) -> str:
        """The checkpoint ``last_checkpoint`` names, checked: it must be a readable file inside
        ``save_dir``. An empty, garbled or dangling ``last_checkpoint`` falls back to the newest
        readable ``.pth`` of ``save_dir`` (one warning); one that points outside ``save_dir`` raises
        ``ValueError``."""
        tag = os.path.join(self.save_dir, "last_checkpoint")
        try:
            with open(tag, "rb") as f:
                raw = f.read(4096)
        except OSError:
            return ""
        try:
            name = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            name, problem = "", "is not text"
        else:
            problem = "is empty" if not name else ""
            if any(ord(c) < 32 for c in name):
                name, problem = "", "is not text"
        if name:
            path = name if os.path.isabs(name) else os.path.join(self.save_dir, name)
            inside = os.path.realpath(path).startswith(os.path.realpath(self.save_dir) + os.sep)
            if not inside:
                raise ValueError(
                    f"{tag} points outside OUTPUT_DIR ({self.save_dir}): {name!r}. --resume continues "
                    "only runs of this OUTPUT_DIR. To start from that file, pass it as MODEL.WEIGHTS "
                    "without --resume; to resume, fix or delete last_checkpoint.")
            if os.path.isfile(path):
                return path
            problem = f"names {name!r}, which does not exist"
        return self._newest_readable_checkpoint(tag, problem)

    def _newest_readable_checkpoint(self, tag: str, problem: str) -> str:
        candidates = sorted(glob.glob(os.path.join(glob.escape(self.save_dir), "*.pth")),
                            key=os.path.getmtime, reverse=True)
        for path in candidates:
            try:
                data = load_weights_file(path)
            except (CheckpointFileError, OSError) as e:
                self.logger.warning(f"Skipping unreadable checkpoint {path}: {e}")
                continue
            self._preloaded = (path, data)
            self.logger.warning(f"{tag} {problem}: resuming from the newest readable checkpoint, {path}")
            return path
        raise ValueError(
            f"{tag} {problem}, and no readable checkpoint (.pth) is in {self.save_dir}. Start without "
            "--resume (or with another OUTPUT_DIR), or delete last_checkpoint.")

    def _load_file(self, filename):
        preloaded, self._preloaded = self._preloaded, None
        if preloaded is not None and preloaded[0] == filename:
            data = preloaded[1]
        else:
            data = load_weights_file(filename)
        return self._interpret(filename, data)

    def _interpret(self, filename, data):
        """The checkpoint dict detectron2's loader expects, from what the file holds."""
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

    # -- saving --------------------------------------------------------------------------------

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
        try:
            atomic_write(save_file, lambda f: torch.save(data, f))
        except Exception as e:
            if not _is_disk_full(e):
                raise
            free = shutil.disk_usage(self.save_dir).free
            previous = self.get_checkpoint_file() if self.has_checkpoint() else ""
            error = CheckpointSaveError(
                f"Could not save checkpoint {save_file}: no space left on device ({free / 2**20:.0f} MiB "
                f"free in {self.save_dir}). "
                + (f"The previous checkpoint, {previous}, is kept and last_checkpoint still names it. "
                   if previous else "No earlier checkpoint of this run exists. ")
                + "Free some space (or set OUTPUT_DIR to another disk), then continue with --resume.")
            error.errno = errno.ENOSPC
            raise error from None
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
