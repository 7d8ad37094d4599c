"""Checkpoints load into plugin models: Detectron (Caffe2) GN blobs, detectron2 checkpoints, and
timm GN ResNets converted by tools/convert_timm_to_d2.py."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("detectron2")
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.layers import ShapeSpec  # noqa: E402

import gn_detectron  # noqa: E402
from gn_detectron.checkpoint import GNCheckpointer  # noqa: E402
from gn_detectron.modeling.backbone import build_gn_resnet_backbone  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "COCO-InstanceSegmentation", "mask_rcnn_R_50_FPN_1x_gn.yaml")


def gn_cfg(**opts):
    cfg = get_cfg()
    gn_detectron.add_gn_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    for k, v in opts.items():
        cfg.merge_from_list([k.replace("__", "."), v])
    return cfg


def caffe2_name(d2_key):
    """detectron2 ResNet name -> Detectron (Caffe2) blob name, e.g.
    res2.0.conv1.norm.weight -> res2_0_branch2a_gn_s."""
    key = d2_key.replace("stem.conv1", "conv1")
    key = key.replace(".conv1", ".branch2a").replace(".conv2", ".branch2b").replace(".conv3", ".branch2c")
    key = key.replace(".shortcut", ".branch1")
    key = key.replace(".norm.weight", "_gn_s").replace(".norm.bias", "_gn_b").replace(".weight", "_w")
    return key.replace(".", "_")


def test_caffe2_gn_blobs_load_into_plugin_model(tmp_path):
    donor = build_gn_resnet_backbone(gn_cfg(), ShapeSpec(channels=3))
    g = torch.Generator().manual_seed(1)
    blobs = {}
    for k, v in donor.state_dict().items():
        name = caffe2_name(k)
        blobs[name] = (torch.randn(v.shape, generator=g) * 0.1 + (1.0 if name.endswith("_gn_s") else 0.0)).numpy()
    assert "res2_0_branch2a_gn_s" in blobs and "conv1_gn_b" in blobs and "res3_0_branch1_gn_s" in blobs
    path = tmp_path / "R-50-GN.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f)

    model = gn_detectron.build_model(gn_cfg())
    GNCheckpointer(model).load(str(path))
    bottom_up = model.backbone.bottom_up.state_dict()
    norm_keys = [k for k in bottom_up if ".norm." in k]
    assert len(norm_keys) == 2 * 53  # stem + 16 blocks x 3 convs + 4 shortcuts
    for k, v in bottom_up.items():
        np.testing.assert_array_equal(v.numpy(), blobs[caffe2_name(k)], err_msg=k)
    assert all(isinstance(m, gn_detectron.GroupNorm) for m in model.modules() if isinstance(m, nn.GroupNorm))


def test_detectron2_checkpoint_round_trip_native_to_fast(tmp_path):
    """A checkpoint written by a torch.nn.GroupNorm model loads into the plugin model with no
    missing or unexpected keys."""
    native = gn_detectron.build_model(gn_cfg(MODEL__GN__IMPL="native"))
    with torch.no_grad():
        for m in native.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.normal_()
    DetectionCheckpointer(native, save_dir=str(tmp_path)).save("model_final")
    fast = gn_detectron.build_model(gn_cfg())
    ckpt = torch.load(tmp_path / "model_final.pth", weights_only=False)
    result = fast.load_state_dict(ckpt["model"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for (ka, a), (kb, b) in zip(native.state_dict().items(), fast.state_dict().items()):
        assert ka == kb and torch.equal(a, b)


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_timm_resnet50_gn_conversion_matches_timm_features(tmp_path, fmt):
    timm = pytest.importorskip("timm")
    net = timm.create_model("resnet50_gn", pretrained=False).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    src = tmp_path / f"resnet50_gn.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(net.state_dict(), str(src))
    else:
        torch.save({"state_dict": net.state_dict()}, src)
    out = tmp_path / "resnet50_gn_d2.pkl"
    run = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_timm_to_d2.py"), str(src), str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr

    cfg = gn_cfg(MODEL__BACKBONE__FREEZE_AT=0)
    backbone = gn_detectron.modeling.apply_gn_spec(build_gn_resnet_backbone(cfg, ShapeSpec(channels=3)),
                                                   gn_detectron.modeling.GNSpec.from_config(cfg)).eval()
    GNCheckpointer(backbone).load(str(out))
    x = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        ours = backbone(x)
        h = net.maxpool(net.act1(net.bn1(net.conv1(x))))
        theirs = {}
        for i, layer in enumerate((net.layer1, net.layer2, net.layer3, net.layer4)):
            h = layer(h)
            theirs[f"res{i + 2}"] = h
    for k, v in theirs.items():
        err = ((ours[k] - v).abs().max() / v.abs().max()).item()
        assert err < 1e-4, (k, err)


def test_timm_conversion_rejects_other_models():
    from gn_detectron.checkpoint import convert_timm_resnet_to_d2

    with pytest.raises(ValueError, match="deep-stem"):
        convert_timm_resnet_to_d2({"conv1.0.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="BatchNorm"):
        convert_timm_resnet_to_d2({"conv1.weight": torch.zeros(1), "bn1.running_mean": torch.zeros(1)})
