"""LazyConfig: Mask R-CNN R50-FPN with GN, from scratch, 3x schedule on COCO 2017 (the recipe of
detectron2's ``Misc/scratch_mask_rcnn_R_50_FPN_3x_gn.yaml``), with the plugin's GroupNorm passed
as a ``norm=`` callable.

Every norm of the model is ``gn_detectron.layers.GroupNorm(32, C)``; ``partial`` makes the
``channels -> module`` callable that detectron2's layers accept. The ResNet stem and blocks are
gn_detectron's (``GNBasicStem``, ``GNBottleneckBlock``: detectron2's, with the ReLU after each GN
run in the GN kernel); the ResNet trains from scratch (no frozen stage, stride in the 3x3 conv,
ImageNet mean/std); box head 4conv1fc with GN as in the GN paper. Trains through
``tools/train_net.py`` (detectron2's ``lazyconfig_train_net.py`` keys: ``train.*``,
``dataloader.*``, ``optimizer.*``, ``lr_multiplier``); 16 images per step, as detectron2's
recipe: ``--num-gpus 8`` for 2 per GPU.

    python tools/train_net.py --config-file configs/lazy/mask_rcnn_R_50_FPN_gn.py --num-gpus 8
    from detectron2.config import LazyConfig, instantiate
    cfg = LazyConfig.load("configs/lazy/mask_rcnn_R_50_FPN_gn.py")
    model = instantiate(cfg.model)

Because the norm callable builds the plugin's layers, ``gn.impl`` must stay "fast" here (use
``norm="GN"`` for a config whose implementation is chosen by ``gn.impl``).
"""
from functools import partial

from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config
from detectron2.modeling.backbone import ResNet

from gn_detectron.layers import GroupNorm
from gn_detectron.modeling.backbone import GNBasicStem, GNBottleneckBlock

GN = partial(GroupNorm, 32)  # channels -> GroupNorm(32, channels)

gn = dict(impl="fast", fuse_activation=True, weight_standardization=False)

_base = get_config("common/models/mask_rcnn_fpn.py")
model = _base.model

model.backbone.bottom_up.stem = L(GNBasicStem)(in_channels=3, out_channels=64, norm=GN)
model.backbone.bottom_up.stages = L(ResNet.make_default_stages)(
    depth=50, block_class=GNBottleneckBlock, stride_in_1x1=False, norm=GN)
model.backbone.bottom_up.freeze_at = 0
model.backbone.norm = GN
model.roi_heads.box_head.conv_dims = [256, 256, 256, 256]
model.roi_heads.box_head.fc_dims = [1024]
model.roi_heads.box_head.conv_norm = GN
model.roi_heads.mask_head.conv_norm = GN
model.pixel_std = [57.375, 57.120, 58.395]

dataloader = get_config("common/data/coco.py").dataloader
optimizer = get_config("common/optim.py").SGD
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_3x
train = get_config("common/train.py").train
train.init_checkpoint = ""  # from scratch
train.max_iter = 270000
train.output_dir = "output/lazy_mask_rcnn_R_50_FPN_gn_3x"
