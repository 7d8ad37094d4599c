"""GN+WS: Weight Standardization of the convolutions that feed GroupNorm (MODEL.GN.WEIGHT_STANDARDIZATION)."""
import copy
import os
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("detectron2")
from detectron2.config import get_cfg  # noqa: E402
from detectron2.layers import Conv2d  # noqa: E402

import gn_detectron  # noqa: E402
from gn_detectron.layers import DeformConv, ModulatedDeformConv, standardize_convolutions, standardize_weight  # noqa: E402
from gn_detectron.layers.weight_standardization import is_weight_standardized  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def standardize_reference(w, eps=1e-5):
    """float64, one output channel at a time: (w - mean) / (unbiased std + eps)."""
    out = torch.empty_like(w, dtype=torch.float64)
    for o in range(w.shape[0]):
        v = w[o].double().flatten()
        n = v.numel()
        mean = v.sum() / n
        std = torch.sqrt(((v - mean) ** 2).sum() / (n - 1))
        out[o] = ((w[o].double() - mean) / (std + eps))
    return out


def test_standardize_weight_matches_the_definition_with_gradients():
    w = (torch.randn(6, 4, 3, 3, dtype=torch.float64) * 0.3 + 0.1).requires_grad_()
    got = standardize_weight(w)
    ref = standardize_reference(w)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    flat = got.detach().reshape(6, -1)
    assert flat.mean(1).abs().max() < 1e-12
    torch.testing.assert_close(flat.std(1), torch.full((6,), 1.0, dtype=torch.float64), rtol=1e-4, atol=0)
    g = torch.randn_like(w)
    (gw,) = torch.autograd.grad(got, w, g)
    (rw,) = torch.autograd.grad(ref, w, g)
    torch.testing.assert_close(gw, rw, rtol=1e-10, atol=1e-12)


def test_detectron2_conv_with_gn_standardizes_and_keeps_its_state_dict():
    conv = Conv2d(8, 16, 3, padding=1, bias=False, norm=nn.GroupNorm(4, 16), activation=F.relu)
    nn.init.normal_(conv.weight, 0.05, 0.2)
    keys = list(conv.state_dict())
    plain = copy.deepcopy(conv)
    assert standardize_convolutions(conv) == 1
    assert is_weight_standardized(conv) and isinstance(conv, Conv2d)
    assert list(conv.state_dict()) == keys
    x = torch.randn(2, 8, 7, 9)
    want = F.relu(conv.norm(F.conv2d(x, standardize_weight(conv.weight), None, 1, 1)))
    torch.testing.assert_close(conv(x), want)
    assert (conv(x) - plain(x)).abs().max() > 1e-2  # it changes what the layer computes
    conv.load_state_dict(plain.state_dict())  # a GN checkpoint loads into GN+WS and back
    plain.load_state_dict(conv.state_dict())
    cls = type(conv)
    assert standardize_convolutions(conv) == 1 and type(conv) is cls  # idempotent
    assert pickle.loads(pickle.dumps(conv)).__class__ is conv.__class__


def test_only_convolutions_feeding_group_norm():
    model = nn.Sequential(
        Conv2d(3, 8, 3, norm=nn.GroupNorm(2, 8)),       # fed to GN through .norm
        Conv2d(8, 8, 3, norm=nn.BatchNorm2d(8)),        # BN: unchanged
        nn.Conv2d(8, 8, 1), nn.GroupNorm(4, 8),         # FCOS-style: conv then GN in a Sequential
        nn.Conv2d(8, 8, 1),                             # no norm: unchanged
    )
    assert standardize_convolutions(model) == 2
    assert [is_weight_standardized(m) for m in (model[0], model[1], model[2], model[4])] == [True, False, True, False]
    x = torch.randn(1, 3, 12, 12)
    h = F.group_norm(F.conv2d(x, standardize_weight(model[0].weight), model[0].bias), 2,
                     model[0].norm.weight, model[0].norm.bias)
    h = model[1](h)
    h = model[3](F.conv2d(h, standardize_weight(model[2].weight), model[2].bias))
    torch.testing.assert_close(model(x), model[4](h))


def test_unsupported_layer_feeding_group_norm_is_named():
    model = nn.Sequential(nn.Conv1d(4, 8, 3), nn.GroupNorm(2, 8))
    with pytest.raises(ValueError, match=r"0 \(torch.nn.modules.conv.Conv1d\) feeds a GroupNorm"):
        standardize_convolutions(model)


@pytest.mark.parametrize("cls", [DeformConv, ModulatedDeformConv])
def test_deformable_convolutions(cls):
    m = cls(4, 8, 3, padding=1, norm=nn.GroupNorm(2, 8))
    nn.init.normal_(m.weight, 0.1, 0.3)
    assert standardize_convolutions(m) == 1 and isinstance(m, cls)
    x, offset = torch.randn(1, 4, 6, 6), torch.randn(1, 18, 6, 6)
    args = (x, offset) if cls is DeformConv else (x, offset, torch.rand(1, 9, 6, 6))
    plain = cls(4, 8, 3, padding=1, norm=m.norm)
    plain.load_state_dict(m.state_dict())
    with torch.no_grad():
        plain.weight.copy_(standardize_weight(m.weight))
    torch.testing.assert_close(m(*args), plain(*args))


def _shapes_cfg(**gn):
    cfg = get_cfg()
    gn_detectron.add_gn_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "shapes", "mask_rcnn_gn.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    for k, v in gn.items():
        cfg.MODEL.GN[k] = v
    return cfg


def test_config_key_with_registered_builders_fast_and_native():
    assert _shapes_cfg().MODEL.GN.WEIGHT_STANDARDIZATION is False
    torch.manual_seed(0)
    gn = gn_detectron.build_model(_shapes_cfg())
    ws = {impl: gn_detectron.build_model(_shapes_cfg(WEIGHT_STANDARDIZATION=True, IMPL=impl))
          for impl in ("fast", "native")}
    for model in ws.values():
        assert model.state_dict().keys() == gn.state_dict().keys()
        model.load_state_dict(gn.state_dict())
    feeding = [m for m in ws["fast"].modules() if isinstance(getattr(m, "norm", None), nn.GroupNorm)]
    assert len(feeding) > 20 and all(is_weight_standardized(m) for m in feeding)
    assert not any(is_weight_standardized(m) for m in gn.modules())
    x = torch.randn(1, 3, 64, 96)
    for m in (gn, *ws.values()):
        m.eval()
    with torch.no_grad():
        f_gn, f_fast, f_nat = (m.backbone(x)["p2"] for m in (gn, ws["fast"], ws["native"]))
    torch.testing.assert_close(f_fast, f_nat, rtol=1e-4, atol=1e-4)
    assert (f_fast - f_gn).abs().max() > 1e-2


def test_stock_zoo_model_converted():
    from detectron2 import model_zoo

    cfg = get_cfg()
    gn_detectron.add_gn_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("Misc/mask_rcnn_R_50_FPN_3x_gn.yaml"))
    cfg.MODEL.GN.WEIGHT_STANDARDIZATION = True
    cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        model = gn_detectron.build_model(cfg)
    ws = [n for n, m in model.named_modules() if is_weight_standardized(m)]
    # ResNet-50: stem + 16 blocks x 3 convs + 4 shortcuts; FPN: 4 lateral + 4 output; box head
    # 4 convs; mask head 4 convs
    assert len(ws) == 1 + 48 + 4 + 8 + 4 + 4, ws


@pytest.mark.parametrize("schedule", ["2x", "3x"])
def test_gn_ws_configs(schedule):
    cfg = get_cfg()
    gn_detectron.add_gn_config(cfg)
    path = os.path.join(ROOT, "configs", "COCO-InstanceSegmentation", f"mask_rcnn_R_50_FPN_{schedule}_gn_ws.yaml")
    cfg.merge_from_file(path)
    base = get_cfg()
    gn_detectron.add_gn_config(base)
    base.merge_from_file(path.replace("_gn_ws.yaml", "_gn.yaml"))
    assert cfg.MODEL.GN.WEIGHT_STANDARDIZATION is True
    base.MODEL.GN.WEIGHT_STANDARDIZATION = True
    assert cfg.dump() == base.dump()  # the GN recipe plus WS, nothing else


def test_inference_reuses_the_standardized_weight_until_the_weight_changes():
    conv = Conv2d(4, 8, 3, norm=nn.GroupNorm(2, 8))
    standardize_convolutions(conv)
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        y1 = conv(x)
        cached = conv.__dict__["_ws_cache"][1]
        assert conv(x) is not None and conv.__dict__["_ws_cache"][1] is cached  # reused
        conv.weight.add_(torch.randn_like(conv.weight))  # an in-place change (an optimizer step) invalidates it
        y2 = conv(x)
    assert conv.__dict__["_ws_cache"][1] is not cached
    want = conv.norm(F.conv2d(x, standardize_reference(conv.weight.detach()).float(), conv.bias.detach()))
    torch.testing.assert_close(y2, want, rtol=1e-5, atol=1e-5)
    assert (y1 - y2).abs().max() > 1e-3
    conv.train()
    y = conv(x)  # with autograd: computed in the graph, gradients reach the stored weight
    y.square().sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
