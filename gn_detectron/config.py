"""``add_gn_config``: the ``MODEL.GN`` options of gn_detectron, read in one place."""
from detectron2.config import CfgNode as CN

__all__ = ["add_gn_config"]


def add_gn_config(cfg):
    """Adds ``MODEL.GN`` and the plugin's dataset and evaluation keys to a detectron2 config
    (idempotent) and returns it.

    MODEL.GN.IMPL ("fast"): which GroupNorm runs every GN layer of the model. "fast": the plugin's
        kernels (gn_detectron.layers.GroupNorm); "native": torch.nn.GroupNorm. Both keep the same
        parameters and checkpoints.
    MODEL.GN.NUM_GROUPS (32): groups per GN layer, as in the paper (G = 32).
    MODEL.GN.CHANNELS_PER_GROUP (0): if > 0, each layer uses C // CHANNELS_PER_GROUP groups
        instead of NUM_GROUPS (the paper's "channels per group" ablation, Table 3).
    MODEL.GN.EPS (1e-5): added to the variance.
    MODEL.GN.FUSE_ACTIVATION (True): with IMPL "fast", run the ReLU that follows a GN inside the
        GN kernel: in detectron2 ``Conv2d(norm=GN, activation=ReLU)`` layers (FPN-free heads) and,
        with the registered builders, inside the ResNet stem and blocks. Results are unchanged.
    MODEL.GN.WEIGHT_STANDARDIZATION (False): every convolution that feeds a GN layer standardizes
        its filters per output channel in its forward pass (GN+WS; mmcv's ConvWS2d convention).
        Parameters and checkpoints unchanged.
    DATASETS.COCO_JSON ([]): datasets in COCO's json format, each ``[name, json_file,
        image_root]``, registered under ``name`` before anything is built
        (:func:`gn_detectron.data.register_coco_json_datasets`); use the names in
        DATASETS.TRAIN / DATASETS.TEST.
    TEST.COCO_EVAL_BACKEND ("faster_coco_eval"): what computes COCO AP: "faster_coco_eval" (the
        faster-coco-eval package, C++; same AP) or "pycocotools" (the official Python code).
    SOLVER.CHECKPOINT_MAX_TO_KEEP (-1): how many periodic checkpoints (``model_*.pth``) of a run
        ``GNTrainer`` keeps besides ``model_final.pth`` once training ends; -1 keeps all
        (detectron2's behaviour), 0 only ``model_final.pth``. The latest one stays while training
        runs, for ``--resume``.
    SOLVER.OPTIMIZER ("SGD"): the optimizer, a name of ``gn_detectron.solver.OPTIMIZER_REGISTRY``:
        "SGD" (detectron2's) or "AdamW" (with SOLVER.BETAS, default (0.9, 0.999)).
    """
    if "COCO_JSON" not in cfg.DATASETS:
        cfg.DATASETS.COCO_JSON = []
    if "COCO_EVAL_BACKEND" not in cfg.TEST:
        cfg.TEST.COCO_EVAL_BACKEND = "faster_coco_eval"
    if "CHECKPOINT_MAX_TO_KEEP" not in cfg.SOLVER:
        cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP = -1
    if "OPTIMIZER" not in cfg.SOLVER:
        cfg.SOLVER.OPTIMIZER = "SGD"
    if "BETAS" not in cfg.SOLVER:
        cfg.SOLVER.BETAS = (0.9, 0.999)
    if "GN" in cfg.MODEL:
        return cfg
    cfg.MODEL.GN = CN()
    cfg.MODEL.GN.IMPL = "fast"
    cfg.MODEL.GN.NUM_GROUPS = 32
    cfg.MODEL.GN.CHANNELS_PER_GROUP = 0
    cfg.MODEL.GN.EPS = 1e-5
    cfg.MODEL.GN.FUSE_ACTIVATION = True
    cfg.MODEL.GN.WEIGHT_STANDARDIZATION = False
    return cfg
