#!/usr/bin/env python
"""End-to-end benchmark: training steps of a GN model with PyTorch's GroupNorm against the
plugin's, side by side in one process, on the same synthetic batches.

Variants (each built from the same config and the same seed):
  native      MODEL.GN.IMPL native: torch.nn.GroupNorm, detectron2's stock builders
  fast        MODEL.GN.IMPL fast: the plugin's GroupNorm through build_model's conversion
              (GN + ReLU fused in the heads' convs)
  fast_fused  the plugin with the registered builders (GN + ReLU fused in the ResNet too)
  frozen_bn   the same network with frozen BN in the ResNet and no norm in FPN and heads:
              the speed GN is measured against. It needs pretrained weights (MODEL.WEIGHTS):
              from random initialisation its activations overflow in the first step
with AMP off and (on a GPU) on. Reports per variant the median training-step time, images/s,
peak memory (CUDA peak allocated on a GPU; peak resident memory on the CPU) and the inference
time per image, then the ratios to `native`; writes JSON with --json.

    python tools/benchmark_train.py                          # GPU: R50-FPN at 800x1333
    python tools/benchmark_train.py --device cpu --iters 5   # CPU: the shapes config, small images
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detectron2.config import get_cfg  # noqa: E402
from detectron2.solver import build_optimizer  # noqa: E402
from detectron2.structures import BitMasks, Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from gn_detectron.config import add_gn_config  # noqa: E402
from gn_detectron.modeling import build_model  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_CONFIG = os.path.join(ROOT, "configs", "COCO-InstanceSegmentation", "mask_rcnn_R_50_FPN_1x_gn.yaml")
CPU_CONFIG = os.path.join(ROOT, "configs", "shapes", "mask_rcnn_gn.yaml")

STOCK = {"MODEL.BACKBONE.NAME": "build_resnet_fpn_backbone",
         "MODEL.ROI_BOX_HEAD.NAME": "FastRCNNConvFCHead",
         "MODEL.ROI_MASK_HEAD.NAME": "MaskRCNNConvUpsampleHead"}
REGISTERED = {"MODEL.BACKBONE.NAME": "build_gn_resnet_fpn_backbone",
              "MODEL.ROI_BOX_HEAD.NAME": "GNFastRCNNConvFCHead",
              "MODEL.ROI_MASK_HEAD.NAME": "GNMaskRCNNConvUpsampleHead"}
# Overrides per variant.
VARIANTS = {
    "native": {**STOCK, "MODEL.GN.IMPL": "native"},
    "fast": {**STOCK, "MODEL.GN.IMPL": "fast"},
    "fast_fused": {**REGISTERED, "MODEL.GN.IMPL": "fast"},
    "frozen_bn": {**STOCK, "MODEL.RESNETS.NORM": "FrozenBN", "MODEL.FPN.NORM": "",
                  "MODEL.ROI_BOX_HEAD.NORM": "", "MODEL.ROI_MASK_HEAD.NORM": ""},
}


def make_cfg(config_file, device, overrides, opts):
    cfg = get_cfg()
    add_gn_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(opts)
    for k, v in overrides.items():
        cfg.merge_from_list([k, v])
    cfg.MODEL.DEVICE = device
    # Step time does not depend on the learning rate; a small one keeps the randomly initialised
    # networks (frozen BN without pretrained weights above all) from diverging in the timed steps.
    cfg.SOLVER.BASE_LR = 1e-4
    return cfg


def synthetic_batches(n_batches, batch_size, height, width, num_classes, seed=0):
    """Batches of detectron2 training inputs: random images, 2-6 boxes per image with their
    masks (the box's interior) and classes."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        batch = []
        for _ in range(batch_size):
            image = (torch.rand(3, height, width, generator=g) * 255).to(torch.uint8)
            k = int(torch.randint(2, 7, (1,), generator=g))
            x0 = torch.rand(k, generator=g) * width * 0.7
            y0 = torch.rand(k, generator=g) * height * 0.7
            w = (torch.rand(k, generator=g) * 0.25 + 0.05) * width
            h = (torch.rand(k, generator=g) * 0.25 + 0.05) * height
            boxes = torch.stack([x0, y0, (x0 + w).clamp(max=width - 1), (y0 + h).clamp(max=height - 1)], 1)
            masks = torch.zeros(k, height, width, dtype=torch.bool)
            for i, (a, b, c, d) in enumerate(boxes.int().tolist()):
                masks[i, b:d, a:c] = True
            inst = Instances((height, width))
            inst.gt_boxes = Boxes(boxes)
            inst.gt_classes = torch.randint(0, num_classes, (k,), generator=g)
            inst.gt_masks = BitMasks(masks)
            batch.append({"image": image, "instances": inst, "height": height, "width": width})
        batches.append(batch)
    return batches


class PeakMemory:
    """Peak memory of a region: CUDA peak allocated bytes, or the process's peak resident set
    (Linux VmHWM, reset through /proc/self/clear_refs)."""

    def __init__(self, device):
        self.device = device

    def reset(self):
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass

    def peak_mb(self):
        if self.device == "cuda":
            return torch.cuda.max_memory_allocated() / 2 ** 20
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def bench_variant(cfg, batches, warmup, iters, amp, infer_iters):
    device = cfg.MODEL.DEVICE
    torch.manual_seed(0)
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS and os.path.isfile(cfg.MODEL.WEIGHTS):
        from gn_detectron.checkpoint import GNCheckpointer

        GNCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.train()
    optimizer = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler(device, enabled=amp)
    memory = PeakMemory(device)
    times = []
    with EventStorage():
        for i in range(warmup + iters):
            batch = batches[i % len(batches)]
            if i == warmup:
                memory.reset()
            sync(device)
            t0 = time.perf_counter()
            with torch.autocast(device, dtype=torch.float16, enabled=amp):
                losses = model(batch)
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    peak = memory.peak_mb()
    model.eval()
    infer = []
    with torch.no_grad():
        for i in range(1 + infer_iters):
            batch = [{k: v for k, v in d.items() if k != "instances"} for d in batches[i % len(batches)]]
            sync(device)
            t0 = time.perf_counter()
            with torch.autocast(device, dtype=torch.float16, enabled=amp):
                model(batch)
            sync(device)
            if i > 0:
                infer.append((time.perf_counter() - t0) / len(batch))
    step = statistics.median(times)
    return {"step_s": step, "images_per_s": len(batches[0]) / step, "peak_mb": peak,
            "infer_s_per_image": statistics.median(infer) if infer else float("nan"),
            "steps": times, "final_loss": float(loss)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--config-file", default=None, help=f"default: {GPU_CONFIG} on a GPU, {CPU_CONFIG} on the CPU")
    p.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="default 800 1333 on a GPU, 384 512 on the CPU")
    p.add_argument("--batch", type=int, default=2, help="images per step (default 2)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--iters", type=int, default=None, help="timed steps per variant")
    p.add_argument("--infer-iters", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=["native", "fast", "fast_fused"], choices=list(VARIANTS),
                   help="default: native fast fast_fused (frozen_bn needs pretrained weights)")
    p.add_argument("--amp", choices=["off", "on", "both"], default=None, help="default: both on a GPU, off on the CPU")
    p.add_argument("--json", default=None)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args(argv)

    on_gpu = args.device == "cuda"
    config = args.config_file or (GPU_CONFIG if on_gpu else CPU_CONFIG)
    h, w = args.image_size or ((800, 1333) if on_gpu else (384, 512))
    warmup = args.warmup if args.warmup is not None else (5 if on_gpu else 2)
    iters = args.iters or (20 if on_gpu else 5)
    amp_modes = {"off": [False], "on": [True], "both": [False, True]}[args.amp or ("both" if on_gpu else "off")]
    num_classes = make_cfg(config, args.device, {}, args.opts).MODEL.ROI_HEADS.NUM_CLASSES
    batches = synthetic_batches(4, args.batch, h, w, num_classes)

    env = {"device": torch.cuda.get_device_name() if on_gpu else (platform.processor() or platform.machine()),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
           "config": os.path.relpath(config, ROOT), "image_size": [h, w], "batch": args.batch,
           "warmup": warmup, "iters": iters}
    print(f"# {env['device']} | torch {env['torch']} | threads {env['threads']} | {env['date']}")
    print(f"# {env['config']} | {args.batch} images of {h}x{w} | {warmup} warm-up + {iters} timed steps per variant")
    rows = []
    for amp in amp_modes:
        for name in args.variants:
            cfg = make_cfg(config, args.device, VARIANTS[name], args.opts)
            r = bench_variant(cfg, batches, warmup, iters, amp, args.infer_iters)
            r.update(variant=name, amp=amp)
            rows.append(r)
            print(f"  {name:>10} amp={'on ' if amp else 'off'}: step {r['step_s'] * 1e3:8.1f} ms  "
                  f"{r['images_per_s']:6.2f} img/s  peak {r['peak_mb']:8.0f} MB  "
                  f"inference {r['infer_s_per_image'] * 1e3:7.1f} ms/img", flush=True)
            if on_gpu:
                torch.cuda.empty_cache()
    print("\nratios to native (step time: >1 = faster than native; memory: <1 = less)")
    for amp in amp_modes:
        base = next((r for r in rows if r["variant"] == "native" and r["amp"] == amp), None)
        if base is None:
            continue
        for r in rows:
            if r["amp"] != amp or r["variant"] == "native":
                continue
            r["speedup_vs_native"] = base["step_s"] / r["step_s"]
            r["memory_vs_native"] = r["peak_mb"] / base["peak_mb"]
            print(f"  {r['variant']:>10} amp={'on ' if amp else 'off'}: speed {r['speedup_vs_native']:5.3f}x   "
                  f"peak memory {r['memory_vs_native']:5.3f}x   "
                  f"inference {base['infer_s_per_image'] / r['infer_s_per_image']:5.3f}x")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
