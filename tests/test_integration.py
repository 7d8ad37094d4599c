"""Detectron2 integration: stock GN configs on the plugin's kernels with one flag, the registered
builders, the optimizer's norm weight decay, batch independence, FREEZE_AT, config errors."""
import copy

import pytest
import torch
from torch import nn

pytest.importorskip("detectron2")
from detectron2 import model_zoo  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.solver import build_optimizer  # noqa: E402
from detectron2.structures import Boxes, Instances, BitMasks  # noqa: E402

import gn_detectron  # noqa: E402
from gn_detectron import GroupNorm  # noqa: E402

# Stock detectron2 GN configs that need no deformable convolution (no compiled detectron2 ops).
STOCK_GN_CONFIGS = [
    "Misc/mask_rcnn_R_50_FPN_3x_gn.yaml",
    "Misc/scratch_mask_rcnn_R_50_FPN_3x_gn.yaml",
    "Misc/scratch_mask_rcnn_R_50_FPN_9x_gn.yaml",
]
REGISTERED = {
    "MODEL.BACKBONE.NAME": "build_gn_resnet_fpn_backbone",
    "MODEL.ROI_BOX_HEAD.NAME": "GNFastRCNNConvFCHead",
    "MODEL.ROI_MASK_HEAD.NAME": "GNMaskRCNNConvUpsampleHead",
}


def make_cfg(config="Misc/mask_rcnn_R_50_FPN_3x_gn.yaml", **opts):
    cfg = get_cfg()
    gn_detectron.add_gn_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file(config))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 100
    flat = []
    for k, v in opts.items():
        flat += [k.replace("__", "."), v]
    cfg.merge_from_list(flat)
    return cfg


def randomize(model, seed=0):
    """Non-trivial GN affine parameters so that a mix-up of layers would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.GroupNorm) and m.affine:
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model


def batch(n=2, h=96, w=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        img = torch.rand(3, h, w, generator=g) * 255
        inst = Instances((h, w))
        boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0], [40.0, 20.0, 110.0, 90.0]])
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.tensor([1, 5])
        masks = torch.zeros(2, h, w, dtype=torch.bool)
        for k, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[k, y0:y1, x0:x1] = True
        inst.gt_masks = BitMasks(masks)
        out.append({"image": img, "instances": inst, "height": h, "width": w})
    return out


def head_outputs(model, inputs):
    """FPN features, box-head class scores and box deltas, and mask logits for fixed boxes."""
    model.eval()
    with torch.no_grad():
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        rh = model.roi_heads
        feats = [features[f] for f in rh.box_in_features]
        boxes = [Boxes(torch.tensor([[5.0, 5.0, 50.0, 60.0], [30.0, 10.0, 120.0, 90.0], [0.0, 0.0, 128.0, 96.0]]))
                 for _ in inputs]
        box_feats = rh.box_head(rh.box_pooler(feats, boxes))
        scores, deltas = rh.box_predictor(box_feats)
        mfeats = [features[f] for f in rh.mask_in_features]
        mask_logits = rh.mask_head.layers(rh.mask_pooler(mfeats, boxes))
    return {**{f"fpn_{k}": v for k, v in features.items()}, "scores": scores, "deltas": deltas,
            "mask_logits": mask_logits}


def training_losses(model, inputs, seed=0):
    from detectron2.utils.events import EventStorage

    model.train()
    torch.manual_seed(seed)
    with EventStorage():
        return {k: v.detach() for k, v in model(inputs).items()}


def assert_close_rel(a, b, rtol):
    err = ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
    assert err < rtol, err


@pytest.mark.slow
@pytest.mark.parametrize("config", STOCK_GN_CONFIGS)
def test_stock_config_one_flag(config):
    """native vs fast from the same weights: same features, head outputs and training losses;
    no torch GroupNorm left in the fast model."""
    native = randomize(gn_detectron.build_model(make_cfg(config, MODEL__GN__IMPL="native")))
    fast = gn_detectron.build_model(make_cfg(config))
    assert fast.load_state_dict(native.state_dict()) is not None
    assert all(isinstance(m, GroupNorm) for m in fast.modules() if isinstance(m, nn.GroupNorm))
    assert not any(isinstance(m, GroupNorm) for m in native.modules())
    assert sum(isinstance(m, GroupNorm) and m.activation == "relu" for m in fast.modules()) == 8  # head convs
    inputs = batch()
    a, b = head_outputs(fast, inputs), head_outputs(native, inputs)
    for k in b:
        assert_close_rel(a[k], b[k], 1e-4)
    la, lb = training_losses(fast, inputs), training_losses(native, inputs)
    assert la.keys() == lb.keys()
    for k in lb:
        torch.testing.assert_close(la[k], lb[k], rtol=1e-3, atol=1e-5)


def test_registered_builders_match_stock():
    """The registered builders (GN + ReLU fused in the ResNet blocks too) give the stock
    builders' outputs with the same weights, and the same parameter names."""
    stock = randomize(gn_detectron.build_model(make_cfg(MODEL__GN__IMPL="native")))
    ours = gn_detectron.build_model(make_cfg(**{k.replace(".", "__"): v for k, v in REGISTERED.items()}))
    assert list(ours.state_dict()) == list(stock.state_dict())
    ours.load_state_dict(stock.state_dict())
    fused = sum(isinstance(m, GroupNorm) and m.activation == "relu" for m in ours.modules())
    assert fused == 1 + 2 * 16 + 8  # stem, two per bottleneck block (R50: 16 blocks), head convs
    inputs = batch()
    a, b = head_outputs(ours, inputs), head_outputs(stock, inputs)
    for k in b:
        assert_close_rel(a[k], b[k], 1e-4)
    la, lb = training_losses(ours, inputs), training_losses(stock, inputs)
    for k in lb:
        torch.testing.assert_close(la[k], lb[k], rtol=1e-3, atol=1e-5)


def test_optimizer_gives_gn_parameters_norm_weight_decay():
    cfg = make_cfg(**{k.replace(".", "__"): v for k, v in REGISTERED.items()})
    cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.WEIGHT_DECAY_NORM = 1e-4, 0.0
    model = gn_detectron.build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    decay_of = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            decay_of[id(p)] = group["weight_decay"]
    gn_params = [p for m in model.modules() if isinstance(m, GroupNorm) for p in (m.weight, m.bias)]
    assert len(gn_params) > 100
    assert all(decay_of[id(p)] == 0.0 for p in gn_params if p.requires_grad)
    conv_weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.requires_grad]
    assert all(decay_of[id(p)] == 1e-4 for p in conv_weights)


def test_sample_does_not_depend_on_batch():
    model = randomize(gn_detectron.build_model(make_cfg()))
    inputs = batch(2)
    both = head_outputs(model, inputs)
    alone = head_outputs(model, inputs[1:])
    for k in ("fpn_p2", "fpn_p5", "scores", "mask_logits"):
        n = alone[k].shape[0]
        assert_close_rel(both[k][-n:], alone[k], 1e-5)


def test_freeze_at_freezes_gn_but_keeps_normalizing():
    cfg = make_cfg(MODEL__BACKBONE__FREEZE_AT=2, **{k.replace(".", "__"): v for k, v in REGISTERED.items()})
    model = gn_detectron.build_model(cfg)
    bottom_up = model.backbone.bottom_up
    stem_norm = bottom_up.stem.conv1.norm
    res2_norm = bottom_up.res2[0].conv1.norm
    res3_norm = bottom_up.res3[0].conv1.norm
    assert isinstance(stem_norm, GroupNorm) and isinstance(res2_norm, GroupNorm)
    assert not stem_norm.weight.requires_grad and not res2_norm.bias.requires_grad
    assert res3_norm.weight.requires_grad
    x = torch.randn(1, 64, 8, 8) * 5 + 3
    y = res2_norm(x)  # still normalizes (a FrozenBN would not)
    expected = torch.relu(nn.functional.group_norm(x, 32, res2_norm.weight, res2_norm.bias))
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)


def test_num_groups_and_channels_per_group():
    model = gn_detectron.build_model(make_cfg(MODEL__GN__NUM_GROUPS=16, MODEL__GN__EPS=1e-3))
    gns = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert all(m.num_groups == 16 and m.eps == 1e-3 for m in gns)
    model = gn_detectron.build_model(make_cfg(MODEL__GN__CHANNELS_PER_GROUP=16,
                                              **{k.replace(".", "__"): v for k, v in REGISTERED.items()}))
    gns = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert all(m.num_groups == m.num_channels // 16 for m in gns)


@pytest.mark.parametrize("registered", [False, True])
def test_group_count_error_names_layer(registered):
    opts = {k.replace(".", "__"): v for k, v in REGISTERED.items()} if registered else {}
    with pytest.raises(ValueError, match=r"MODEL.GN.NUM_GROUPS=48 does not divide the (64|256) channels of backbone\.[\w.]+\.norm"):
        gn_detectron.build_model(make_cfg(MODEL__GN__NUM_GROUPS=48, **opts))


def test_unknown_norm_lists_registered_names():
    cfg = make_cfg(MODEL__RESNETS__NORM="GroupNormFast", **{k.replace(".", "__"): v for k, v in REGISTERED.items()})
    with pytest.raises(KeyError, match="unknown norm 'GroupNormFast'.*FastGN.*GN"):
        gn_detectron.build_model(cfg)


def test_unknown_impl():
    with pytest.raises(ValueError, match="MODEL.GN.IMPL must be one of.*'turbo'"):
        gn_detectron.build_model(make_cfg(MODEL__GN__IMPL="turbo"))


def test_native_impl_with_registered_builders_uses_torch_group_norm():
    model = gn_detectron.build_model(make_cfg(MODEL__GN__IMPL="native",
                                              **{k.replace(".", "__"): v for k, v in REGISTERED.items()}))
    assert not any(isinstance(m, GroupNorm) for m in model.modules())
    assert sum(type(m) is nn.GroupNorm for m in model.modules()) > 50
