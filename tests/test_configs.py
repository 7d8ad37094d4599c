"""Every config in configs/ loads and builds; batch and learning rate scale with the world size."""
import glob
import os

import pytest
import torch
from torch import nn

pytest.importorskip("detectron2")
from detectron2.config import LazyConfig, get_cfg, instantiate  # noqa: E402
from detectron2.engine import DefaultTrainer  # noqa: E402

import gn_detectron  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YAMLS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "COCO-InstanceSegmentation", "*.yaml"))
               if not os.path.basename(p).startswith("Base"))


def load(path):
    cfg = get_cfg()
    gn_detectron.add_gn_config(cfg)
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    return cfg


@pytest.mark.parametrize("path", YAMLS, ids=[os.path.basename(p) for p in YAMLS])
def test_yaml_config_builds_a_gn_model(path):
    cfg = load(path)
    assert cfg.SOLVER.IMS_PER_BATCH // cfg.SOLVER.REFERENCE_WORLD_SIZE == 2
    assert cfg.SOLVER.WEIGHT_DECAY_NORM == 0.0
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False
    model = gn_detectron.build_model(cfg)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(isinstance(m, gn_detectron.GroupNorm) for m in norms)
    depth = cfg.MODEL.RESNETS.DEPTH
    blocks = {50: 16, 101: 33}[depth]
    assert sum(m.activation == "relu" for m in norms) == 1 + 2 * blocks + 8


def test_world_size_scaling_keeps_two_images_per_gpu():
    cfg = load(os.path.join(ROOT, "configs", "COCO-InstanceSegmentation", "mask_rcnn_R_50_FPN_1x_gn.yaml"))
    one_gpu = DefaultTrainer.auto_scale_workers(cfg, 1)
    assert one_gpu.SOLVER.IMS_PER_BATCH == 2
    assert one_gpu.SOLVER.BASE_LR == pytest.approx(0.02 / 8)
    assert one_gpu.SOLVER.MAX_ITER == 90000 * 8
    four = DefaultTrainer.auto_scale_workers(cfg, 4)
    assert four.SOLVER.IMS_PER_BATCH == 8 and four.SOLVER.BASE_LR == pytest.approx(0.01)


def test_lazy_config_uses_the_layer_as_norm_callable():
    cfg = LazyConfig.load(os.path.join(ROOT, "configs", "lazy", "mask_rcnn_R_50_FPN_gn.py"))
    model = instantiate(cfg.model)
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) > 60 and all(isinstance(m, gn_detectron.GroupNorm) for m in norms)
    model.eval()
    with torch.no_grad():
        out = model.backbone(torch.randn(1, 3, 64, 64))
    assert set(out) == {"p2", "p3", "p4", "p5", "p6"}
