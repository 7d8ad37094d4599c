"""LazyConfig: Mask R-CNN R50-FPN with the plugin's GroupNorm passed as a ``norm=`` callable.

Every norm of the model is ``gn_detectron.layers.GroupNorm(32, C)``; ``partial`` makes the
``channels -> module`` callable that detectron2's layers accept. The ResNet runs from scratch
(no frozen stem, divide by std), box head 4conv1fc with GN as in the GN paper.

    from detectron2.config import LazyConfig, instantiate
    cfg = LazyConfig.load("configs/lazy/mask_rcnn_R_50_FPN_gn.py")
    model = instantiate(cfg.model)
"""
from functools import partial

from detectron2.model_zoo import get_config

from gn_detectron.layers import GroupNorm

GN = partial(GroupNorm, 32)  # channels -> GroupNorm(32, channels)

_base = get_config("common/models/mask_rcnn_fpn.py")
model = _base.model

model.backbone.bottom_up.stem.norm = GN
model.backbone.bottom_up.stages.norm = GN
model.backbone.bottom_up.stages.stride_in_1x1 = False
model.backbone.bottom_up.freeze_at = 0
model.backbone.norm = GN
model.roi_heads.box_head.conv_dims = [256, 256, 256, 256]
model.roi_heads.box_head.fc_dims = [1024]
model.roi_heads.box_head.conv_norm = GN
model.roi_heads.mask_head.conv_norm = GN
model.pixel_std = [57.375, 57.120, 58.395]
