"""Conversion of timm's GN ResNets (``resnet50_gn`` and any timm ``ResNet`` built with a
GroupNorm ``norm_layer`` and the plain 7x7 stem) to detectron2's ResNet parameter names.

timm                              detectron2
conv1.weight, bn1.*               stem.conv1.weight, stem.conv1.norm.*
layer{i}.{j}.conv{k}.weight       res{i+1}.{j}.conv{k}.weight
layer{i}.{j}.bn{k}.*              res{i+1}.{j}.conv{k}.norm.*
layer{i}.{j}.downsample.0.weight  res{i+1}.{j}.shortcut.weight
layer{i}.{j}.downsample.1.*       res{i+1}.{j}.shortcut.norm.*
fc.*                              (dropped: the classifier)

The result is for ``STRIDE_IN_1X1: False`` (timm strides in the 3x3 conv), RGB input with
ImageNet mean/std (configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x_gn_timm.yaml).
"""
import re
from typing import Dict

import torch

__all__ = ["convert_timm_resnet_to_d2"]

def _rename(key: str) -> str:
    m = re.match(r"^layer(\d)\.(\d+)\.(.*)$", key)
    if m is None:
        if key == "conv1.weight":
            return "stem.conv1.weight"
        m1 = re.match(r"^bn1\.(weight|bias)$", key)
        if m1:
            return f"stem.conv1.norm.{m1.group(1)}"
        return ""
    stage, block, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
    prefix = f"res{stage}.{block}"
    for pattern, repl in ((r"^conv(\d)\.weight$", r"conv\1.weight"),
                          (r"^bn(\d)\.(weight|bias)$", r"conv\1.norm.\2"),
                          (r"^downsample\.0\.weight$", r"shortcut.weight"),
                          (r"^downsample\.1\.(weight|bias)$", r"shortcut.norm.\1")):
        if re.match(pattern, rest):
            return f"{prefix}.{re.sub(pattern, repl, rest)}"
    return ""


def convert_timm_resnet_to_d2(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Returns the state_dict of a timm GN ResNet under detectron2's ResNet names (classifier
    dropped). Raises ValueError for a state_dict that is not such a ResNet (a deep stem
    ``conv1.0.weight``, running statistics of BatchNorm, or keys with no detectron2 equivalent)."""
    if "conv1.weight" not in state_dict:
        hint = " (a deep-stem ResNet such as resnet50d: not supported)" if "conv1.0.weight" in state_dict else ""
        raise ValueError(f"not a timm ResNet state_dict: no 'conv1.weight'{hint}")
    if any(k.endswith("running_mean") for k in state_dict):
        raise ValueError("this timm ResNet uses BatchNorm (running_mean found), not GroupNorm")
    out, unknown = {}, []
    for key, value in state_dict.items():
        if key.startswith("fc."):
            continue
        new = _rename(key)
        if not new:
            unknown.append(key)
            continue
        out[new] = value
    if unknown:
        raise ValueError(f"keys with no detectron2 ResNet equivalent: {unknown[:8]}"
                         f"{' ...' if len(unknown) > 8 else ''}")
    return out
