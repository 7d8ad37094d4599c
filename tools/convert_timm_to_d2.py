#!/usr/bin/env python
"""Converts a timm GN ResNet checkpoint (``resnet50_gn`` and its family) to a detectron2 weights
file.

    python tools/convert_timm_to_d2.py resnet50_gn.safetensors output/resnet50_gn_d2.pkl
    python tools/convert_timm_to_d2.py pytorch_model.bin output/resnet50_gn_d2.pkl

Input: a ``.safetensors`` file, or a ``.pth``/``.bin``/``.pt`` file read with
``torch.load(weights_only=True)`` (no code runs), holding a state_dict (or a dict with a
"state_dict" or "model" entry). Output: a ``.pkl`` with numpy arrays under detectron2's ResNet
names, ``matching_heuristics`` on so that ``MODEL.WEIGHTS`` loads it into the backbone. Use it
with configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x_gn_timm.yaml (RGB, ImageNet mean/std).
"""
import argparse
import os
import pickle
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gn_detectron.checkpoint import convert_timm_resnet_to_d2  # noqa: E402


def load_state_dict(path):
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    data = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a state_dict, found {type(data).__name__}")
    return data


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="timm checkpoint: .safetensors, .pth, .bin or .pt")
    parser.add_argument("output", help="detectron2 weights file to write (.pkl)")
    args = parser.parse_args(argv)
    converted = convert_timm_resnet_to_d2(load_state_dict(args.source))
    blob = {"model": {k: v.detach().cpu().numpy() for k, v in converted.items()},
            "__author__": "timm (converted by gn_detectron)", "matching_heuristics": True}
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    tmp = args.output + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(blob, f)
    os.replace(tmp, args.output)
    print(f"wrote {args.output}: {len(converted)} tensors")


if __name__ == "__main__":
    main()
