#!/usr/bin/env python
"""End-to-end benchmark: training steps of a GN model with PyTorch's GroupNorm against the
plugin's, side by side in one process, on the same synthetic batches.

Variants (each built from the same config and the same seed):
  native      MODEL.GN.IMPL native: torch.nn.GroupNorm, detectron2's stock builders
  fast        MODEL.GN.IMPL fast: the plugin's GroupNorm through build_model's conversion
              (GN + ReLU fused in the heads' convs)
  fast_fused  the plugin with the registered builders (GN + ReLU fused in the ResNet too)
  gn_ws       fast_fused with MODEL.GN.WEIGHT_STANDARDIZATION (GN+WS): its cost is reported as
              its step time relative to fast_fused
  frozen_bn   the same network with frozen BN in the ResNet and no norm in FPN and heads:
              the speed GN is measured against. Without pretrained weights (MODEL.WEIGHTS) its
              frozen statistics are set from the first batch (see calibrate_frozen_bn): a
              frozen-BN ResNet with the identity statistics of a fresh FrozenBatchNorm2d
              overflows in its first step, which says nothing about its speed
with AMP off and (on a GPU) on. Reports per variant the median training-step time, images/s,
peak memory (CUDA peak allocated on a GPU; peak resident memory on the CPU) and the inference
time per image, then the ratios to `native` and each step time relative to `frozen_bn`; writes
JSON with --json.

    python tools/benchmark_train.py                          # GPU: R50-FPN at 800x1333
    python tools/benchmark_train.py --device cpu --iters 5   # CPU: the shapes config, small images

On the CPU the variants' steps alternate in one process (--schedule interleaved), because a
shared machine's speed drifts by more than the differences measured; each variant's peak memory
then comes from a short run of that variant alone in a child process.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
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
    "gn_ws": {**REGISTERED, "MODEL.GN.IMPL": "fast", "MODEL.GN.WEIGHT_STANDARDIZATION": True},
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
    # networks from diverging in the timed steps.
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


def calibrate_frozen_bn(model, batch):
    """Sets the statistics of every FrozenBatchNorm2d of ``model`` to the per-channel mean and
    variance of its input on ``batch``, layer after layer in one inference pass (a forward
    pre-hook on each: a layer's input is already normalised upstream when it arrives). Returns
    the number of layers set. The network then normalises its activations as a trained frozen-BN
    network does, so its steps run on finite values; the time of a step does not depend on the
    values otherwise."""
    from detectron2.layers import FrozenBatchNorm2d

    def set_statistics(module, inputs):
        x = inputs[0].float()
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))

    layers = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    handles = [m.register_forward_pre_hook(set_statistics) for m in layers]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model([{k: v for k, v in d.items() if k != "instances"} for d in batch])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return len(layers)


class VariantRunner:
    """One variant's model, optimizer and gradient scaler; times single training steps and
    single inference passes on given batches."""

    def __init__(self, cfg, amp, calibration_batch):
        self.device = cfg.MODEL.DEVICE
        self.amp = amp
        torch.manual_seed(0)
        self.model = build_model(cfg)
        if cfg.MODEL.WEIGHTS and os.path.isfile(cfg.MODEL.WEIGHTS):
            from gn_detectron.checkpoint import GNCheckpointer

            GNCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        elif cfg.MODEL.RESNETS.NORM == "FrozenBN":
            calibrate_frozen_bn(self.model, calibration_batch)
        self.optimizer = build_optimizer(cfg, self.model)
        self.scaler = torch.amp.GradScaler(self.device, enabled=amp)
        self.last_loss = float("nan")

    def train_step(self, batch):
        """Seconds for one forward + backward + optimizer step."""
        self.model.train()
        sync(self.device)
        t0 = time.perf_counter()
        with EventStorage(), torch.autocast(self.device, dtype=torch.float16, enabled=self.amp):
            losses = self.model(batch)
        loss = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        sync(self.device)
        seconds = time.perf_counter() - t0
        self.last_loss = float(loss.detach())
        return seconds

    def infer(self, batch):
        """Seconds per image for one inference pass over the batch (annotations dropped)."""
        self.model.eval()
        batch = [{k: v for k, v in d.items() if k != "instances"} for d in batch]
        with torch.no_grad():
            sync(self.device)
            t0 = time.perf_counter()
            with torch.autocast(self.device, dtype=torch.float16, enabled=self.amp):
                self.model(batch)
            sync(self.device)
        return (time.perf_counter() - t0) / len(batch)


def summarize(times, infer, peak, batch_size, loss):
    step = statistics.median(times)
    return {"step_s": step, "images_per_s": batch_size / step, "peak_mb": peak,
            "infer_s_per_image": statistics.median(infer) if infer else float("nan"),
            "steps": times, "final_loss": loss}


def bench_sequential(cfgs, batches, warmup, iters, amp, infer_iters):
    """Each variant in turn: build, warm up, time its steps, then its inference, then free it.
    Peak memory is measured over the timed steps of that variant alone."""
    results = {}
    for name, cfg in cfgs.items():
        runner = VariantRunner(cfg, amp, batches[0])
        memory = PeakMemory(runner.device)
        times = []
        for i in range(warmup + iters):
            if i == warmup:
                memory.reset()
            t = runner.train_step(batches[i % len(batches)])
            if i >= warmup:
                times.append(t)
        peak = memory.peak_mb()
        infer = [runner.infer(batches[i % len(batches)]) for i in range(1 + infer_iters)][1:]
        results[name] = summarize(times, infer, peak, len(batches[0]), runner.last_loss)
        del runner
        if cfg.MODEL.DEVICE == "cuda":
            torch.cuda.empty_cache()
    return results


def bench_interleaved(cfgs, batches, warmup, iters, amp, infer_iters):
    """All variants alive at once, their steps alternating (the order rotated every round), so
    that a drift of the machine's speed (other jobs, frequency, the allocator's state) reaches
    every variant alike. Peak memory is not measured here (the models share one process)."""
    runners = {name: VariantRunner(cfg, amp, batches[0]) for name, cfg in cfgs.items()}
    names = list(runners)
    times = {name: [] for name in names}
    infer = {name: [] for name in names}
    for i in range(warmup + iters):
        for name in names[i % len(names):] + names[:i % len(names)]:
            t = runners[name].train_step(batches[i % len(batches)])
            if i >= warmup:
                times[name].append(t)
    for i in range(1 + infer_iters):
        for name in names[i % len(names):] + names[:i % len(names)]:
            t = runners[name].infer(batches[i % len(batches)])
            if i > 0:
                infer[name].append(t)
    return {name: summarize(times[name], infer[name], float("nan"), len(batches[0]), runners[name].last_loss)
            for name in names}


def peak_memory_in_child(args, name, amp):
    """Peak memory of one variant's training steps, measured in a fresh process so that no other
    variant's allocations count."""
    cmd = [sys.executable, os.path.abspath(__file__), "--device", args.device, "--variants", name,
           "--schedule", "sequential", "--amp", "on" if amp else "off", "--warmup", "1", "--iters", "2",
           "--infer-iters", "0", "--batch", str(args.batch), "--peak-memory-only"]
    if args.config_file:
        cmd += ["--config-file", args.config_file]
    if args.image_size:
        cmd += ["--image-size", *map(str, args.image_size)]
    cmd += args.opts
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"peak-memory run of {name} failed:\n{run.stderr[-3000:]}")
    return float(run.stdout.strip().splitlines()[-1])


def against(rows, ref_name):
    """(reference row, row) for every row of another variant with the same AMP mode as a row of
    variant ``ref_name``."""
    for ref in (r for r in rows if r["variant"] == ref_name):
        for r in rows:
            if r["amp"] == ref["amp"] and r["variant"] != ref_name:
                yield ref, r


def paired_ratio(numerator_steps, denominator_steps):
    """The ratio of the steps taken in the same round, median over the rounds."""
    return statistics.median(a / b for a, b in zip(numerator_steps, denominator_steps))


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
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="default: all of them")
    p.add_argument("--amp", choices=["off", "on", "both"], default=None, help="default: both on a GPU, off on the CPU")
    p.add_argument("--schedule", choices=["interleaved", "sequential"], default=None,
                   help="interleaved: all variants alive, steps alternating, peak memory of each "
                        "measured in a child process; sequential: one variant after the other in "
                        "this process. Default: interleaved on the CPU, sequential on a GPU")
    p.add_argument("--peak-memory-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", default=None)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args(argv)

    on_gpu = args.device == "cuda"
    config = args.config_file or (GPU_CONFIG if on_gpu else CPU_CONFIG)
    h, w = args.image_size or ((800, 1333) if on_gpu else (384, 512))
    warmup = args.warmup if args.warmup is not None else (5 if on_gpu else 2)
    iters = args.iters or (20 if on_gpu else 5)
    amp_modes = {"off": [False], "on": [True], "both": [False, True]}[args.amp or ("both" if on_gpu else "off")]
    schedule = args.schedule or ("sequential" if on_gpu else "interleaved")
    num_classes = make_cfg(config, args.device, {}, args.opts).MODEL.ROI_HEADS.NUM_CLASSES
    batches = synthetic_batches(4, args.batch, h, w, num_classes)

    if args.peak_memory_only:
        cfgs = {name: make_cfg(config, args.device, VARIANTS[name], args.opts) for name in args.variants}
        result = bench_sequential(cfgs, batches, warmup, iters, amp_modes[0], 0)
        print(result[args.variants[0]]["peak_mb"])
        return

    env = {"device": torch.cuda.get_device_name() if on_gpu else (platform.processor() or platform.machine()),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
           "config": os.path.relpath(config, ROOT), "image_size": [h, w], "batch": args.batch,
           "warmup": warmup, "iters": iters, "schedule": schedule, "opts": args.opts}
    print(f"# {env['device']} | torch {env['torch']} | threads {env['threads']} | {env['date']}")
    print(f"# {env['config']} | {args.batch} images of {h}x{w} | {warmup} warm-up + {iters} timed steps "
          f"per variant, {schedule}")
    rows = []
    for amp in amp_modes:
        cfgs = {name: make_cfg(config, args.device, VARIANTS[name], args.opts) for name in args.variants}
        if schedule == "sequential":
            results = bench_sequential(cfgs, batches, warmup, iters, amp, args.infer_iters)
        else:
            results = bench_interleaved(cfgs, batches, warmup, iters, amp, args.infer_iters)
            for name in results:
                results[name]["peak_mb"] = peak_memory_in_child(args, name, amp)
        for name, r in results.items():
            r.update(variant=name, amp=amp)
            rows.append(r)
            print(f"  {name:>10} amp={'on ' if amp else 'off'}: step {r['step_s'] * 1e3:8.1f} ms  "
                  f"{r['images_per_s']:6.2f} img/s  peak {r['peak_mb']:8.0f} MB  "
                  f"inference {r['infer_s_per_image'] * 1e3:7.1f} ms/img", flush=True)
    amp_label = {False: "off", True: "on "}
    if "native" in args.variants and len(args.variants) > 1:
        print("\nratios to native (step time: >1 = faster than native; memory: <1 = less)")
    for base, r in against(rows, "native"):
        r["speedup_vs_native"] = base["step_s"] / r["step_s"]
        r["memory_vs_native"] = r["peak_mb"] / base["peak_mb"]
        paired = ""
        if schedule == "interleaved":
            r["paired_speedup_vs_native"] = paired_ratio(base["steps"], r["steps"])
            paired = f" (paired per round {r['paired_speedup_vs_native']:5.3f}x)"
        print(f"  {r['variant']:>10} amp={amp_label[r['amp']]}: speed {r['speedup_vs_native']:5.3f}x{paired}   "
              f"peak memory {r['memory_vs_native']:5.3f}x   "
              f"inference {base['infer_s_per_image'] / r['infer_s_per_image']:5.3f}x")
    if "frozen_bn" in args.variants and len(args.variants) > 1:
        print("\nstep time relative to frozen BN (1.00 = as fast as frozen BN; 1.05 = 5% slower)")
    for ref, r in against(rows, "frozen_bn"):
        r["step_vs_frozen_bn"] = r["step_s"] / ref["step_s"]
        paired = ""
        if schedule == "interleaved":
            r["paired_step_vs_frozen_bn"] = paired_ratio(r["steps"], ref["steps"])
            paired = f" (paired per round {r['paired_step_vs_frozen_bn']:5.3f})"
        print(f"  {r['variant']:>10} amp={amp_label[r['amp']]}: {r['step_vs_frozen_bn']:5.3f}{paired}")
    if {"gn_ws", "fast_fused"} <= set(args.variants):
        print("\nGN+WS: step time relative to fast_fused (the same model without WS; 1.05 = 5% slower)")
    for ref, r in against(rows, "fast_fused"):
        if r["variant"] != "gn_ws":
            continue
        r["step_vs_fast_fused"] = r["step_s"] / ref["step_s"]
        paired = ""
        if schedule == "interleaved":
            r["paired_step_vs_fast_fused"] = paired_ratio(r["steps"], ref["steps"])
            paired = f" (paired per round {r['paired_step_vs_fast_fused']:5.3f})"
        print(f"  {r['variant']:>10} amp={amp_label[r['amp']]}: {r['step_vs_fast_fused']:5.3f}{paired}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
