"""Registered ResNet and ResNet-FPN backbones that take their norm by registered name and run
GN with the ReLU that follows it in one kernel.

``MODEL.BACKBONE.NAME: "build_gn_resnet_backbone"`` or ``"build_gn_resnet_fpn_backbone"``.
They read the same config keys as detectron2's ``build_resnet_backbone`` /
``build_resnet_fpn_backbone`` and build modules with the same parameter names, so checkpoints are
interchangeable. The differences: ``MODEL.RESNETS.NORM`` and ``MODEL.FPN.NORM`` are looked up in
:data:`gn_detectron.modeling.norm.NORM_REGISTRY` (configured by ``MODEL.GN``), and the stem and
block classes below fuse ``F.relu_`` into the preceding GroupNorm where ``MODEL.GN.FUSE_ACTIVATION``
allows (the ReLU after the residual addition stays separate).
"""
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet

from ..layers import GroupNorm
from .norm import GNSpec, norm_factory

__all__ = ["GNBasicStem", "GNBasicBlock", "GNBottleneckBlock", "build_gn_resnet_backbone",
           "build_gn_resnet_fpn_backbone", "fuse_block_relus"]


def fuse_relu_into_norm(conv) -> bool:
    """Makes ``conv.norm`` apply the ReLU that follows the conv, if it is the plugin's
    GroupNorm; returns whether it did."""
    norm = getattr(conv, "norm", None)
    if isinstance(norm, GroupNorm) and norm.activation is None:
        norm.activation = "relu"
        return True
    return False


class GNBasicStem(BasicStem):
    """detectron2's ``BasicStem`` (conv, norm, ReLU, max-pool) with the ReLU fused into GN."""

    def __init__(self, in_channels=3, out_channels=64, norm="BN", fuse_relu=True):
        super().__init__(in_channels, out_channels, norm)
        self.fuse_relu = fuse_relu
        self.relu_fused = fuse_relu and fuse_relu_into_norm(self.conv1)

    def forward(self, x):
        x = self.conv1(x)
        if not self.relu_fused:
            x = F.relu_(x)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class GNBasicBlock(BasicBlock):
    """detectron2's ``BasicBlock`` (ResNet-18/34) with the first ReLU fused into GN."""

    def __init__(self, in_channels, out_channels, *, stride=1, norm="BN", fuse_relu=True):
        super().__init__(in_channels, out_channels, stride=stride, norm=norm)
        self.fuse_relu = fuse_relu
        self.relu_fused = fuse_relu and fuse_relu_into_norm(self.conv1)

    def forward(self, x):
        out = self.conv1(x)
        if not self.relu_fused:
            out = F.relu_(out)
        out = self.conv2(out)
        out += self.shortcut(x) if self.shortcut is not None else x
        return F.relu_(out)


class GNBottleneckBlock(BottleneckBlock):
    """detectron2's ``BottleneckBlock`` with the ReLUs after conv1 and conv2 fused into GN."""

    def __init__(self, in_channels, out_channels, *, fuse_relu=True, **kwargs):
        super().__init__(in_channels, out_channels, **kwargs)
        self.fuse_relu = fuse_relu
        self.relu_fused = (fuse_relu and fuse_relu_into_norm(self.conv1),
                           fuse_relu and fuse_relu_into_norm(self.conv2))

    def forward(self, x):
        out = self.conv1(x)
        if not self.relu_fused[0]:
            out = F.relu_(out)
        out = self.conv2(out)
        if not self.relu_fused[1]:
            out = F.relu_(out)
        out = self.conv3(out)
        out += self.shortcut(x) if self.shortcut is not None else x
        return F.relu_(out)


def fuse_block_relus(model) -> int:
    """Fuses the ReLUs of the GN stems and blocks above whose norm became the plugin's GroupNorm
    after they were built (a LazyConfig model with ``norm="GN"``, converted by
    ``apply_gn_spec``), where their ``fuse_relu`` allows. Returns the number of ReLUs fused."""
    fused = 0
    for m in model.modules():
        if isinstance(m, (GNBasicStem, GNBasicBlock)) and m.fuse_relu and not m.relu_fused:
            m.relu_fused = fuse_relu_into_norm(m.conv1)
            fused += m.relu_fused
        elif isinstance(m, GNBottleneckBlock) and m.fuse_relu:
            new = tuple(done or fuse_relu_into_norm(conv) for done, conv in zip(m.relu_fused, (m.conv1, m.conv2)))
            fused += sum(new) - sum(m.relu_fused)
            m.relu_fused = new
    return fused


@BACKBONE_REGISTRY.register()
def build_gn_resnet_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """detectron2's ResNet from ``MODEL.RESNETS``, with the registered norm and fused blocks."""
    r = cfg.MODEL.RESNETS
    spec = GNSpec.from_config(cfg)
    norm = norm_factory(spec, r.NORM)
    fuse = spec.fuse_activation
    if any(r.DEFORM_ON_PER_STAGE):
        raise ValueError("build_gn_resnet_backbone does not support deformable convolutions "
                         "(MODEL.RESNETS.DEFORM_ON_PER_STAGE); use detectron2's build_resnet_backbone")
    if r.RES5_DILATION not in (1, 2):
        raise ValueError(f"MODEL.RESNETS.RES5_DILATION must be 1 or 2, got {r.RES5_DILATION}")
    blocks_per_stage = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3],
                        152: [3, 8, 36, 3]}
    if r.DEPTH not in blocks_per_stage:
        raise ValueError(f"MODEL.RESNETS.DEPTH must be one of {sorted(blocks_per_stage)}, got {r.DEPTH}")
    basic = r.DEPTH in (18, 34)
    if basic and (r.RES2_OUT_CHANNELS != 64 or r.RES5_DILATION != 1 or r.NUM_GROUPS != 1):
        raise ValueError("ResNet-18/34 need MODEL.RESNETS.RES2_OUT_CHANNELS=64, RES5_DILATION=1, NUM_GROUPS=1")

    stem = GNBasicStem(input_shape.channels, r.STEM_OUT_CHANNELS, norm=norm, fuse_relu=fuse)
    in_channels, out_channels = r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS
    bottleneck_channels = r.NUM_GROUPS * r.WIDTH_PER_GROUP
    stages = []
    for idx, num_blocks in enumerate(blocks_per_stage[r.DEPTH]):
        dilation = r.RES5_DILATION if idx == 3 else 1
        first_stride = 1 if idx == 0 or (idx == 3 and dilation == 2) else 2
        kwargs = dict(num_blocks=num_blocks, stride_per_block=[first_stride] + [1] * (num_blocks - 1),
                      in_channels=in_channels, out_channels=out_channels, norm=norm, fuse_relu=fuse)
        if basic:
            kwargs["block_class"] = GNBasicBlock
        else:
            kwargs.update(block_class=GNBottleneckBlock, bottleneck_channels=bottleneck_channels,
                          stride_in_1x1=r.STRIDE_IN_1X1, dilation=dilation, num_groups=r.NUM_GROUPS)
        stages.append(ResNet.make_stage(**kwargs))
        in_channels = out_channels
        out_channels *= 2
        bottleneck_channels *= 2
    return ResNet(stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_gn_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """detectron2's ResNet-FPN with the registered norm in the ResNet and the FPN."""
    return FPN(
        bottom_up=build_gn_resnet_backbone(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=norm_factory(cfg, cfg.MODEL.FPN.NORM),
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
