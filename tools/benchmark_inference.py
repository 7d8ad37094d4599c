#!/usr/bin/env python
"""Inference benchmark: per-image latency of Mask R-CNN with GN run four ways, side by side.

Variants (the same weights, the same image, the same work: ``model.inference(...,
do_postprocess=False)`` or its export, i.e. everything up to the detections in the network's
input coordinates):
  native       PyTorch eager, torch.nn.GroupNorm (gn_detectron.convert_to_native of the plugin model)
  plugin       PyTorch eager, the plugin's GroupNorm (GN + ReLU fused)
  torchscript  the plugin model traced (detectron2's TracingAdapter, torch.jit.trace), plugin kernels
  onnxruntime  the plugin model exported to ONNX (TorchScript-based exporter, opset 17), run by
               ONNX Runtime (CPUExecutionProvider; CUDAExecutionProvider on a GPU when installed)
Models (random weights, seed 0):
  shapes  configs/shapes/mask_rcnn_gn.yaml (ResNet-18-FPN), one 128x171 image
  r50     configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x_gn.yaml, one 800x1333 image

The variants run interleaved: after --warmup runs of each, --rounds rounds in which every
variant runs once, in an order rotated each round, so that a shared machine's drift reaches all
of them alike. Reports the median (and min) latency per image and the ratio to ``native``,
and the largest differences of each variant's detections from ``native``'s.

    python tools/benchmark_inference.py                                # both models
    python tools/benchmark_inference.py --models shapes --rounds 20 --json out.json
"""
import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {
    "shapes": (os.path.join(ROOT, "configs", "shapes", "mask_rcnn_gn.yaml"), (128, 171)),
    "r50": (os.path.join(ROOT, "configs", "COCO-InstanceSegmentation", "mask_rcnn_R_50_FPN_1x_gn.yaml"), (800, 1333)),
}
VARIANTS = ("native", "plugin", "torchscript", "onnxruntime")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["shapes", "r50"])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds for the shapes model")
    parser.add_argument("--r50-rounds", type=int, default=3, help="timed rounds for R50-FPN (seconds per image on a CPU)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs of each variant first")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="intra-op threads (torch and ORT)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is available")
    if args.rounds < 1 or args.r50_rounds < 1 or args.warmup < 0:
        parser.error("--rounds and --r50-rounds must be >= 1, --warmup >= 0")
    return args


def build(config, device):
    from detectron2.config import get_cfg

    from gn_detectron import add_gn_config, build_model

    cfg = get_cfg()
    add_gn_config(cfg)
    cfg.merge_from_file(config)
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", device])
    torch.manual_seed(0)
    return build_model(cfg).eval()


def make_runners(model, image, variants, device, threads, workdir):
    """name -> callable() running one inference of ``image``; and name -> Instances."""
    from gn_detectron import convert_to_native
    from gn_detectron.export import detection as D

    runners, outputs = {}, {}

    def eager(m):
        def run():
            with torch.no_grad():
                return m.inference([{"image": image}], do_postprocess=False)[0]
        return run

    adapter = D.tracing_adapter(model, image)
    if "native" in variants:
        runners["native"] = eager(convert_to_native(copy.deepcopy(model)))
    if "plugin" in variants:
        runners["plugin"] = eager(model)
    if "torchscript" in variants:
        D.trace_torchscript(adapter, image, os.path.join(workdir, "model.ts"))
        ts = torch.jit.load(os.path.join(workdir, "model.ts"), map_location=device)
        runners["torchscript"] = lambda: D.run_exported(ts, adapter, image)
    if "onnxruntime" in variants:
        import onnxruntime as ort

        path = D.export_onnx(adapter, image, os.path.join(workdir, "model.onnx"))
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                print("onnxruntime: no CUDAExecutionProvider in this onnxruntime build; skipped on the GPU")
                path = None
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if path:
            runner = D.OnnxRuntimeModel(path, providers=providers, threads=threads)
            runners["onnxruntime"] = lambda: D.run_exported(runner, adapter, image)
    return runners


def timed(fn, device):
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def bench_model(name, args, workdir):
    from gn_detectron.export.detection import instance_differences

    config, (h, w) = MODELS[name]
    model = build(config, args.device)
    generator = torch.Generator().manual_seed(0)
    image = (torch.rand(3, h, w, generator=generator) * 255).to(args.device)
    t0 = time.perf_counter()
    runners = make_runners(model, image, args.variants, args.device, args.threads, workdir)
    print(f"[{name}] variants ready in {time.perf_counter() - t0:.1f} s: {', '.join(runners)}")
    names = list(runners)
    detections = {}
    for _ in range(args.warmup):
        for v in names:
            detections[v] = timed(runners[v], args.device)[1]
    times = {v: [] for v in names}
    rounds = args.rounds if name == "shapes" else args.r50_rounds
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for v in order:
            seconds, detections[v] = timed(runners[v], args.device)
            times[v].append(seconds)
    base = "native" if "native" in times else names[0]
    rows = []
    for v in names:
        med = statistics.median(times[v])
        diff = instance_differences(detections[base].to("cpu"), detections[v].to("cpu"))
        rows.append({"model": name, "variant": v, "median_ms": 1e3 * med, "min_ms": 1e3 * min(times[v]),
                     "ratio_to_" + base: med / statistics.median(times[base]), "runs": len(times[v]),
                     "detections": len(detections[v]), "difference_from_" + base: diff})
    return rows


def machine_info(args):
    import onnxruntime

    info = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "threads": args.threads, "device": args.device}
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return info


def main(argv=None):
    import warnings

    import gn_detectron  # noqa: F401  (registers the ONNX symbolic)

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    info = machine_info(args)
    print(json.dumps(info))
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models:
            rows += bench_model(name, args, workdir)
    print("\n| model | variant | median ms/image | min ms | vs native | detections | max box diff px | max score diff |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = next(v for k, v in r.items() if k.startswith("ratio_to_"))
        diff = next(v for k, v in r.items() if k.startswith("difference_from_"))
        print(f"| {r['model']} | {r['variant']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | {ratio:.2f} | "
              f"{r['detections']} | {diff.get('boxes_px', 'n/a')} | {diff.get('scores', 'n/a')} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "results": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
