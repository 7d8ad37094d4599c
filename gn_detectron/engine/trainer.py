"""``GNTrainer``: detectron2's ``DefaultTrainer`` with the plugin's model building, COCO
evaluation, CPU multi-process training and a results file."""
import inspect
import json
import logging
import os
import weakref
from collections import OrderedDict

import torch
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint.checkpointer import GNCheckpointer
from ..data.coco_json import check_training_datasets
from ..evaluation import COCOEvaluator
from ..modeling import build_model
from ..solver import build_optimizer
from .hooks import keep_periodic_checkpoints

__all__ = ["GNTrainer", "create_ddp_model"]

logger = logging.getLogger(__name__)


def create_ddp_model(model, *, broadcast_buffers=False):
    """Wraps ``model`` in DistributedDataParallel when there are several processes. On a GPU each
    process drives its local device; on the CPU (gloo) DDP takes no ``device_ids`` (detectron2's
    own helper passes them, which CPU DDP refuses). ``broadcast_buffers`` goes to the argument
    that the installed torch names for it (``forward_sync_buffers`` since it deprecated the old
    name)."""
    if comm.get_world_size() == 1:
        return model
    on_gpu = next(model.parameters()).device.type == "cuda"
    device_ids = [comm.get_local_rank()] if on_gpu else None
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        sync = {"forward_sync_buffers": broadcast_buffers}
    else:
        sync = {"broadcast_buffers": broadcast_buffers}
    return DistributedDataParallel(model, device_ids=device_ids, **sync)


class GNTrainer(DefaultTrainer):
    """Trains and evaluates a detectron2 model whose GN layers follow ``MODEL.GN``.

    Differences from ``DefaultTrainer``: the model comes from :func:`gn_detectron.build_model`;
    weights load through :class:`GNCheckpointer`; the training sets are checked against the config
    first (:func:`~gn_detectron.data.check_training_datasets`); evaluation is
    :class:`gn_detectron.evaluation.COCOEvaluator` (bbox and, with ``MODEL.MASK_ON``, segm; AP
    computed by ``TEST.COCO_EVAL_BACKEND``); several processes also train on the CPU (gloo);
    :meth:`test` writes ``OUTPUT_DIR/results.json``.
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        check_batch_size(cfg, comm.get_world_size())
        check_training_datasets(cfg)
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        trainer_cls = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = trainer_cls(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = GNCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    _failed = False  # a step or a hook raised: after_train skips the final evaluation

    def run_step(self):
        """One training step; a divergence (non-finite loss, or non-finite predictions that
        detectron2 catches first) stops training with the iteration and the last loss terms."""
        try:
            super().run_step()
        except FloatingPointError as e:
            self._failed = True
            latest = self.storage.latest()
            terms = {k: round(v[0], 6) for k, v in latest.items() if "loss" in k}
            raise FloatingPointError(
                f"Training diverged at iteration {self.iter}: {e}\nLast logged loss terms: {terms}. "
                "Lower SOLVER.BASE_LR, lengthen SOLVER.WARMUP_ITERS, or enable SOLVER.CLIP_GRADIENTS.") from e
        except BaseException:
            self._failed = True
            raise

    def after_step(self):
        try:
            super().after_step()
        except BaseException:  # e.g. a checkpoint that could not be saved (full disk)
            self._failed = True
            raise

    def after_train(self):
        """detectron2's ``after_train``, except that a run that failed (a step or a hook raised,
        e.g. a checkpoint save on a full disk) does not go on to the final evaluation: its
        results would describe a model that was not saved. The other hooks (timers, metric
        writers) still close."""
        if not self._failed:
            return super().after_train()
        self.storage.iter = self.iter
        for h in self._hooks:
            if isinstance(h, hooks.EvalHook):
                logger.warning("Training stopped by an error: final evaluation skipped")
                continue
            h.after_train()

    def build_hooks(self):
        """detectron2's hooks; the periodic checkpointer keeps ``SOLVER.CHECKPOINT_MAX_TO_KEEP``."""
        return keep_periodic_checkpoints(super().build_hooks(),
                                         self.cfg.SOLVER.get("CHECKPOINT_MAX_TO_KEEP", -1))

    @classmethod
    def build_model(cls, cfg):
        model = build_model(cfg)
        logger.info("Model:\n{}".format(model))
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        """The optimizer ``SOLVER.OPTIMIZER`` names (:func:`gn_detectron.solver.build_optimizer`)."""
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        """detectron2's train loader over the checked records of ``DATASETS.TRAIN``: images that
        are missing and annotations that are malformed, degenerate or of an unknown class are
        skipped with one counting warning (:func:`gn_detectron.data.sanitize.sanitize_dataset_dicts`);
        an image file that cannot be decoded is skipped, named and counted when it is read
        (:class:`gn_detectron.data.sanitize.CheckedImageMapper`). ``DATASETS.TEST`` is checked
        too (as :meth:`build_test_loader` does), so that an error there stops the run before
        training rather than after it."""
        from detectron2.data import DatasetMapper, build_detection_train_loader
        from detectron2.data.build import filter_images_with_only_crowd_annotations

        from ..data.sanitize import CheckedImageMapper, load_checked_dataset_dicts

        dicts = load_checked_dataset_dicts(cfg.DATASETS.TRAIN, cfg.MODEL.ROI_HEADS.NUM_CLASSES)
        load_checked_dataset_dicts(cfg.DATASETS.TEST, cfg.MODEL.ROI_HEADS.NUM_CLASSES, for_evaluation=True)
        if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
            dicts = filter_images_with_only_crowd_annotations(dicts)
        mapper = CheckedImageMapper(DatasetMapper(cfg, True), ", ".join(cfg.DATASETS.TRAIN))
        return build_detection_train_loader(cfg, dataset=dicts, mapper=mapper)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """detectron2's test loader over the checked records of ``dataset_name``: a missing or
        unreadable image, or an annotation that would crash or corrupt the COCO evaluation, stops
        with a :class:`gn_detectron.data.sanitize.DatasetError` that names it (evaluating a subset
        would give a wrong AP); see ``sanitize_dataset_dicts(..., for_evaluation=True)``."""
        from detectron2.data import DatasetMapper, build_detection_test_loader

        from ..data.sanitize import CheckedImageMapper, load_checked_dataset_dicts

        dicts = load_checked_dataset_dicts([dataset_name], cfg.MODEL.ROI_HEADS.NUM_CLASSES, for_evaluation=True)
        mapper = CheckedImageMapper(DatasetMapper(cfg, False), dataset_name, for_evaluation=True)
        return build_detection_test_loader(dataset=dicts, mapper=mapper, num_workers=cfg.DATALOADER.NUM_WORKERS)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator.from_config(cfg, dataset_name, output_dir=output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and cfg.OUTPUT_DIR:
            write_results(cfg.OUTPUT_DIR, results)
        return results


def check_batch_size(cfg, world_size):
    """Fails before anything is built when the batch cannot be split evenly over the processes."""
    total = cfg.SOLVER.IMS_PER_BATCH
    if total <= 0 or total % world_size:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH={total} cannot be split over {world_size} processes: set it to a "
            f"multiple of {world_size} (e.g. {2 * world_size} for 2 images per process), or set "
            "SOLVER.REFERENCE_WORLD_SIZE so that detectron2 scales it to the number of processes")


def write_results(output_dir, results):
    """Writes the evaluation results (dataset -> task -> metric -> value) to
    ``output_dir/results.json``, atomically."""
    os.makedirs(output_dir, exist_ok=True)

    def plain(obj):
        if isinstance(obj, (dict, OrderedDict)):
            return {k: plain(v) for k, v in obj.items()}
        if isinstance(obj, torch.Tensor):
            return obj.tolist()
        if isinstance(obj, float) and obj != obj:  # NaN is not JSON
            return None
        return obj

    path = os.path.join(output_dir, "results.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(plain(results), f, indent=1)
    os.replace(tmp, path)
    return path
