"""``add_gn_config``: the ``MODEL.GN`` options of gn_detectron, read in one place."""
from detectron2.config import CfgNode as CN

__all__ = ["add_gn_config"]


def add_gn_config(cfg):
    """Adds ``MODEL.GN`` to a detectron2 config (idempotent) and returns it.

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

    Also ``SOLVER.CHECKPOINT_MAX_TO_KEEP`` (-1): how many periodic checkpoints (``model_*.pth``) of
        a run ``GNTrainer`` keeps besides ``model_final.pth`` once training ends; -1 keeps all
        (detectron2's behaviour), 0 only ``model_final.pth``. The latest one stays while training
        runs, for ``--resume``.
    """
    if "CHECKPOINT_MAX_TO_KEEP" not in cfg.SOLVER:
        cfg.SOLVER.CHECKPOINT_MAX_TO_KEEP = -1
    if "GN" in cfg.MODEL:
        return cfg
    cfg.MODEL.GN = CN()
    cfg.MODEL.GN.IMPL = "fast"
    cfg.MODEL.GN.NUM_GROUPS = 32
    cfg.MODEL.GN.CHANNELS_PER_GROUP = 0
    cfg.MODEL.GN.EPS = 1e-5
    cfg.MODEL.GN.FUSE_ACTIVATION = True
    return cfg
