"""``build_model``: detectron2's ``build_model`` with the config's GN choice applied."""
import logging

import torch
from detectron2.modeling import build_model as d2_build_model
from torch import nn

from ..layers import GroupNorm, convert_group_norm, standardize_convolutions
from ..layers.weight_standardization import is_weight_standardized
from .backbone import fuse_block_relus
from .norm import GNSpec, GroupCountMismatch

__all__ = ["build_model", "apply_gn_spec"]

logger = logging.getLogger(__name__)


def apply_gn_spec(model: nn.Module, spec: GNSpec, regroup: bool = True) -> nn.Module:
    """Makes every GroupNorm of ``model`` follow ``spec``: its group count (``NUM_GROUPS`` or
    ``CHANNELS_PER_GROUP``) and eps; with ``impl`` "fast", every ``torch.nn.GroupNorm`` becomes the
    plugin's GroupNorm, GN + ReLU fused where ``fuse_activation``; with "native" the
    ``torch.nn.GroupNorm`` layers stay; with ``weight_standardization`` every convolution that feeds
    a GroupNorm standardizes its filters (GN+WS). Parameters are kept. With ``regroup`` False the
    layers keep their own group counts and eps (LazyConfigs that set neither).
    Raises ValueError naming the first layer whose channels the group setting does not divide."""
    for name, m in model.named_modules():
        if isinstance(m, GroupCountMismatch):
            raise ValueError(m.message(name))
        if isinstance(m, nn.GroupNorm) and regroup:
            groups = spec.groups_for(m.num_channels)
            if groups == 0:
                raise ValueError(GroupCountMismatch(m.num_channels, spec).message(name))
            m.num_groups, m.eps = groups, spec.eps
    if spec.weight_standardization:
        standardize_convolutions(model)
    if spec.impl == "fast":
        model = convert_group_norm(model, fuse_activation=spec.fuse_activation)
        if spec.fuse_activation:
            fuse_block_relus(model)
    return model


def build_model(cfg) -> nn.Module:
    """Builds the model of ``cfg`` with detectron2's ``build_model`` and applies ``MODEL.GN``:
    every GroupNorm, whichever builder made it (detectron2's stock "GN" included), follows
    ``MODEL.GN.IMPL``, ``NUM_GROUPS``/``CHANNELS_PER_GROUP`` and ``EPS``, and with IMPL "fast" the
    GN + ReLU pairs of detectron2 ``Conv2d`` layers run fused (``FUSE_ACTIVATION``). With
    ``MODEL.DEVICE`` "cuda" on a machine without a GPU, the model is built on the CPU (one log
    line; ``cfg`` is not changed)."""
    spec = GNSpec.from_config(cfg)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(f"gn_detectron: no GPU found: the model is built on the CPU "
                       f"(MODEL.DEVICE {cfg.MODEL.DEVICE!r} replaced by 'cpu')")
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.DEVICE = "cpu"
    model = d2_build_model(cfg)
    model = apply_gn_spec(model, spec)
    n_gn = sum(isinstance(m, nn.GroupNorm) for m in model.modules())
    n_fast = sum(isinstance(m, GroupNorm) for m in model.modules())
    n_fused = sum(isinstance(m, GroupNorm) and m.activation is not None for m in model.modules())
    n_ws = sum(is_weight_standardized(m) for m in model.modules())
    logger.info(f"gn_detectron: {n_gn} GroupNorm layers, {n_fast} on the plugin's kernels, "
                f"{n_fused} with a fused ReLU (MODEL.GN.IMPL={spec.impl})"
                + (f"; {n_ws} weight-standardized convolutions" if n_ws else ""))
    return model.to(torch.device(cfg.MODEL.DEVICE))
