"""``setup_cfg``: the config of a training run, read in one place from the command line."""
import logging

import torch
from detectron2.config import get_cfg
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint.checkpointer import remove_stale_temporaries
from ..config import add_gn_config
from .output_dir import lock_output_dir

__all__ = ["setup_cfg"]

logger = logging.getLogger(__name__)


def setup_cfg(args, freeze=True):
    """Builds the config of ``args`` (``--config-file`` and trailing ``KEY VALUE`` opts) with
    ``MODEL.GN`` added, the built-in shapes datasets and the ``DATASETS.COCO_JSON`` datasets
    registered, ``TEST.COCO_EVAL_BACKEND`` checked, and detectron2's
    ``default_setup`` (logging, output dir, seeds) applied. With no GPU present and
    ``MODEL.DEVICE`` "cuda", the model runs on the CPU (logged). The main process takes the
    ``OUTPUT_DIR`` lock (:func:`lock_output_dir`: a second run on the same folder fails at once)
    and removes temporary files that killed saves left there."""
    from ..data import register_coco_json_datasets, register_shapes_datasets
    from ..evaluation import get_coco_eval_backend

    cfg = get_cfg()
    add_gn_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    fell_back = cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available()
    if fell_back:
        cfg.MODEL.DEVICE = "cpu"
    if freeze:
        cfg.freeze()
    register_shapes_datasets()
    register_coco_json_datasets(cfg)
    get_coco_eval_backend(cfg.TEST.COCO_EVAL_BACKEND)  # an unknown name fails now, not after training
    if comm.is_main_process() and cfg.OUTPUT_DIR:
        lock_output_dir(cfg.OUTPUT_DIR)  # before anything is written there
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="gn_detectron", abbrev_name="gn")
    if fell_back:
        logging.getLogger("detectron2").info("No GPU found: MODEL.DEVICE set to 'cpu'")
    if comm.is_main_process() and cfg.OUTPUT_DIR:
        remove_stale_temporaries(cfg.OUTPUT_DIR, logging.getLogger("gn_detectron"))
    return cfg
