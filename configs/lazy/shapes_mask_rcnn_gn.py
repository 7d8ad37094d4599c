"""LazyConfig of the built-in demo: configs/shapes/mask_rcnn_gn.yaml as a ``.py`` config.

The same model (same modules and parameter names: its checkpoints and the yacs config's are
interchangeable), data, optimizer, schedule and outputs: Mask R-CNN with GN in the ResNet-18, the
64-channel FPN and both heads, from scratch, on the synthetic shapes dataset at 128x171, 2 images
per step, 1800 AdamW iterations.

    python tools/train_net.py --config-file configs/lazy/shapes_mask_rcnn_gn.py
    python tools/train_net.py --config-file configs/lazy/shapes_mask_rcnn_gn.py train.max_iter=100 gn.impl=native

Norms are named "GN" (detectron2's ``nn.GroupNorm(32, C)``); ``tools/train_net.py`` then applies the
``gn`` node below to the instantiated model: the plugin's kernels, GN + ReLU fused in the stem,
the blocks and the box head.
"""
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.data import DatasetMapper, build_detection_test_loader, build_detection_train_loader
from detectron2.data import get_detection_dataset_dicts
from detectron2.data import transforms as T
from detectron2.evaluation import COCOEvaluator
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import ResNet
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from gn_detectron.data.sanitize import load_checked_dataset_dicts
from gn_detectron.modeling.backbone import GNBasicBlock, GNBasicStem

# GroupNorm options (gn_detectron.modeling.GNSpec): impl "fast" or "native", fuse_activation,
# weight_standardization; num_groups / channels_per_group / eps regroup every GN layer if set.
gn = dict(impl="fast", fuse_activation=True, weight_standardization=False)

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
model.backbone.bottom_up.stem = L(GNBasicStem)(in_channels=3, out_channels=64, norm="GN")
model.backbone.bottom_up.stages = L(ResNet.make_default_stages)(depth=18, block_class=GNBasicBlock, norm="GN")
model.backbone.bottom_up.freeze_at = 0
model.backbone.out_channels = 64
model.backbone.norm = "GN"
model.pixel_mean = [127.5, 127.5, 127.5]
model.pixel_std = [64.0, 64.0, 64.0]
rpn = model.proposal_generator
rpn.head.in_channels = 64
rpn.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
rpn.pre_nms_topk = (500, 500)
rpn.post_nms_topk = (128, 100)
rpn.batch_size_per_image = 128
heads = model.roi_heads
heads.num_classes = 6
heads.batch_size_per_image = 32
heads.positive_fraction = 0.5
heads.box_pooler.output_size = 14
heads.box_head.input_shape = ShapeSpec(channels=64, height=14, width=14)
heads.box_head.conv_dims = [64, 64]
heads.box_head.fc_dims = [256]
heads.box_head.conv_norm = "GN"
heads.box_predictor.input_shape = ShapeSpec(channels=256)
heads.box_predictor.test_topk_per_image = 20
heads.mask_head.input_shape = ShapeSpec(channels=64, width=14, height=14)
heads.mask_head.conv_dims = [64, 64, 64]
heads.mask_head.conv_norm = "GN"

dataloader = dict(
    train=L(build_detection_train_loader)(
        dataset=L(load_checked_dataset_dicts)(names=("shapes_train",), num_classes="${model.roi_heads.num_classes}"),
        mapper=L(DatasetMapper)(
            is_train=True,
            augmentations=[L(T.ResizeShortestEdge)(short_edge_length=(128,), max_size=171, sample_style="choice"),
                           L(T.RandomFlip)(horizontal=True)],
            image_format="BGR",
            use_instance_mask=True,
            instance_mask_format="bitmask",  # the dataset's masks are RLE
        ),
        total_batch_size=2,
        num_workers=0,  # on a 2-core CPU, loader workers only compete with training
    ),
    test=L(build_detection_test_loader)(
        dataset=L(get_detection_dataset_dicts)(names="shapes_val", filter_empty=False),
        mapper=L(DatasetMapper)(
            is_train=False,
            augmentations=[L(T.ResizeShortestEdge)(short_edge_length=128, max_size=171)],
            image_format="BGR",
        ),
        num_workers=0,
    ),
    evaluator=L(COCOEvaluator)(dataset_name="shapes_val", tasks=("bbox", "segm"),
                               output_dir="${train.output_dir}/inference/shapes_val"),
)

optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.lr = 0.001
optimizer.betas = (0.9, 0.999)
optimizer.weight_decay = 0.05
optimizer.params.weight_decay_norm = 0.0

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[1440, 1680], num_updates=1800),
    warmup_length=100 / 1800,
    warmup_method="linear",
    warmup_factor=0.001,
)

train = model_zoo.get_config("common/train.py").train
train.output_dir = "output/shapes_mask_rcnn_gn_lazy"
train.max_iter = 1800
train.checkpointer = dict(period=900, max_to_keep=100)
train.eval_period = 450
train.log_period = 20
train.device = "cuda"  # the CPU when there is no GPU
train.seed = 0
