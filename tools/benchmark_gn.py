#!/usr/bin/env python
"""Operator benchmark: gn_detectron's group_norm against PyTorch's, side by side in one run.

For the detection shapes of DESIGN.md section 5 it times forward, backward and both, per dtype
and memory format, for the plugin and for ``torch.nn.functional.group_norm``; and the fused
GN+ReLU against ATen's GN followed by ReLU. It measures the machine's copy bandwidth in the same
run and prints, per case, the time, the effective GB/s (the floor's bytes: forward reads x and
writes y, backward reads dy and x and writes dx), the share of copy bandwidth and the speed ratio
to PyTorch (>1: the plugin is faster), then geometric means. Writes JSON with ``--json``.
The plugin's calls and PyTorch's alternate, so that both meet the same state of the caches and
of the memory allocator.

    python tools/benchmark_gn.py                       # CPU, or the GPU when there is one
    python tools/benchmark_gn.py --device cuda --dtypes float32 bfloat16 --formats nchw nhwc
"""
import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gn_detectron.ops import backend_info, group_norm  # noqa: E402

# R50-FPN Mask R-CNN, 2 images of about 800x1333: ResNet stages, FPN levels, box and mask heads.
DETECTION_SHAPES = [
    (2, 256, 200, 336),
    (2, 256, 100, 168),
    (2, 64, 200, 336),
    (2, 512, 100, 168),
    (2, 1024, 50, 84),
    (512, 256, 14, 14),
    (512, 256, 7, 7),
]
QUICK_SHAPES = [(2, 256, 100, 168), (2, 64, 200, 336), (2, 1024, 50, 84), (512, 256, 7, 7)]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}
FORMATS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}


class Timer:
    """Wall time of callables, in ms, with device synchronisation (CUDA events on a GPU)."""

    def __init__(self, device, warmup, reps, min_time):
        self.device, self.warmup, self.reps, self.min_time = device, warmup, reps, min_time

    def once(self, fn):
        if self.device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            return a.elapsed_time(b)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    def __call__(self, fn):
        """Median time of ``fn``."""
        return self.interleaved({"fn": fn})["fn"]

    def interleaved(self, fns):
        """Median time of each callable of the dict ``fns``, their calls alternating (the order
        rotated every round), so that every one of them meets the same state of the caches and
        of the memory allocator: on the CPU whether an output's pages are still mapped from a
        previous call costs more than the kernel itself at some sizes."""
        names = list(fns)
        for _ in range(self.warmup):
            for name in names:
                fns[name]()
        times = {name: [] for name in names}
        start_all = time.perf_counter()
        r = 0
        while r < self.reps or (time.perf_counter() - start_all < self.min_time and r < 200):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                times[name].append(self.once(fns[name]))
            r += 1
        return {name: statistics.median(t) for name, t in times.items()}


def copy_bandwidth(device, timer, nbytes):
    """GB/s of a device-to-device copy, counting bytes read plus bytes written."""
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / ms / 1e6


def make_inputs(shape, dtype, fmt, device, sets):
    """`sets` independent input sets, so that repeated runs over small tensors do not measure
    the cache."""
    C = shape[1]
    out = []
    for _ in range(sets):
        x = torch.randn(shape, device=device, dtype=torch.float32).to(dtype).to(memory_format=fmt)
        # parameters in the input's dtype: PyTorch's CUDA kernel needs them to match
        w = (torch.rand(C, device=device) + 0.5).to(dtype)
        b = (torch.randn(C, device=device) * 0.1).to(dtype)
        out.append((x, w, b, torch.randn_like(x)))
    return out


def bench_case(shape, dtype, fmt, groups, device, timer, sets):
    inputs = make_inputs(shape, dtype, fmt, device, sets)
    numel = math.prod(shape)
    esize = torch.empty((), dtype=dtype).element_size()
    floor_bytes = {"fwd": 2 * numel * esize, "bwd": 3 * numel * esize, "fwd+bwd": 5 * numel * esize}

    impls = {
        "plugin": lambda x, w, b: group_norm(x, groups, w, b),
        "torch": lambda x, w, b: F.group_norm(x, groups, w, b),
        "plugin_relu": lambda x, w, b: group_norm(x, groups, w, b, activation="relu"),
        "torch_relu": lambda x, w, b: torch.relu(F.group_norm(x, groups, w, b)),
    }
    passes = {"fwd": {}, "bwd": {}, "fwd+bwd": {}}
    graphs = {}
    for name, fn in impls.items():
        state = {"i": 0}

        def next_set(state=state):
            state["i"] = (state["i"] + 1) % len(inputs)
            return inputs[state["i"]]

        def fwd(fn=fn, next_set=next_set):
            x, w, b, _ = next_set()
            with torch.no_grad():
                fn(x, w, b)

        graphs[name] = []
        for x, w, b, dy in inputs:
            xs, ws, bs = (t.detach().requires_grad_() for t in (x, w, b))
            graphs[name].append((fn(xs, ws, bs), (xs, ws, bs), dy))

        def bwd(state=state, own=graphs[name]):
            state["i"] = (state["i"] + 1) % len(own)
            y, params, dy = own[state["i"]]
            torch.autograd.grad(y, params, dy, retain_graph=True)

        def fwd_bwd(fn=fn, next_set=next_set):
            x, w, b, dy = next_set()
            xs, ws, bs = (t.detach().requires_grad_() for t in (x, w, b))
            y = fn(xs, ws, bs)
            torch.autograd.grad(y, (xs, ws, bs), dy)

        passes["fwd"][name], passes["bwd"][name], passes["fwd+bwd"][name] = fwd, bwd, fwd_bwd

    # The plugin and PyTorch alternate call by call (GN and GN + ReLU timed apart, so that each
    # pair meets the same memory state); the retained backward graphs of all four are alive
    # throughout, for every pass.
    results = {name: {} for name in impls}
    for pass_name, fns in passes.items():
        for pair in (("plugin", "torch"), ("plugin_relu", "torch_relu")):
            for name, ms in timer.interleaved({n: fns[n] for n in pair}).items():
                results[name][pass_name] = ms
    del graphs
    return results, floor_bytes


def geomean(values):
    values = [v for v in values if v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtypes", nargs="+", default=None, choices=list(DTYPES),
                   help="default: float32 on the CPU; float32 float16 bfloat16 on a GPU")
    p.add_argument("--formats", nargs="+", default=None, choices=list(FORMATS),
                   help="default: nchw on the CPU; nchw nhwc on a GPU")
    p.add_argument("--groups", type=int, default=32)
    p.add_argument("--shapes", nargs="+", default=None, help="e.g. 2x256x200x336 512x256x7x7")
    p.add_argument("--quick", action="store_true", help="fewer shapes and repetitions")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    dtypes = args.dtypes or (["float32", "float16", "bfloat16"] if on_gpu else ["float32"])
    formats = args.formats or (["nchw", "nhwc"] if on_gpu else ["nchw"])
    if args.shapes:
        shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]
    else:
        shapes = QUICK_SHAPES if args.quick else DETECTION_SHAPES
    reps = args.reps or (20 if on_gpu else (3 if args.quick else 7))
    timer = Timer(device, warmup=5 if on_gpu else 1, reps=reps, min_time=0.05 if on_gpu else 0.0)
    sets = 1
    if on_gpu:
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20)

    info = backend_info()
    env = {
        "device": torch.cuda.get_device_name(device) if on_gpu else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"), "extension": info["extension"],
    }
    bw = copy_bandwidth(device, timer, (1 << 30) if on_gpu else (128 << 20))
    env["copy_GBps"] = bw
    print(f"# {env['device']} | torch {env['torch']} | threads {env['threads']} | {env['date']}")
    print(f"# {env['extension']}")
    print(f"# copy bandwidth (read+write): {bw:.1f} GB/s")
    if (info["devices"].get(device.type) or {}).get("float32") != "gn_detectron":
        print("# WARNING: the plugin has no kernel here; 'plugin' is PyTorch's group_norm")

    rows = []
    header = (f"{'shape':>18} {'dtype':>8} {'fmt':>4} {'pass':>7} | {'plugin ms':>9} {'torch ms':>9} "
              f"{'speedup':>7} | {'GB/s':>7} {'%copy':>5} | {'fused ms':>8} {'gn+relu':>8} {'speedup':>7}")
    print(header)
    print("-" * len(header))
    for dtype_name in dtypes:
        for fmt_name in formats:
            for shape in shapes:
                dtype = DTYPES[dtype_name]
                if on_gpu:
                    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
                    sets = max(1, min(8, math.ceil(3 * l2 / nbytes)))
                res, floor = bench_case(shape, dtype, FORMATS[fmt_name], args.groups, device, timer, sets)
                for pass_name in ("fwd", "bwd", "fwd+bwd"):
                    t_p, t_t = res["plugin"][pass_name], res["torch"][pass_name]
                    t_pr, t_tr = res["plugin_relu"][pass_name], res["torch_relu"][pass_name]
                    gbps = floor[pass_name] / t_p / 1e6
                    row = {"shape": list(shape), "dtype": dtype_name, "format": fmt_name, "pass": pass_name,
                           "plugin_ms": t_p, "torch_ms": t_t, "speedup": t_t / t_p, "GBps": gbps,
                           "copy_share": gbps / bw, "fused_ms": t_pr, "torch_gn_relu_ms": t_tr,
                           "fused_speedup": t_tr / t_pr}
                    rows.append(row)
                    print(f"{'x'.join(map(str, shape)):>18} {dtype_name:>8} {fmt_name:>4} {pass_name:>7} | "
                          f"{t_p:9.3f} {t_t:9.3f} {t_t / t_p:6.2f}x | {gbps:7.1f} {100 * gbps / bw:4.0f}% | "
                          f"{t_pr:8.3f} {t_tr:8.3f} {t_tr / t_pr:6.2f}x", flush=True)

    print()
    print("geometric means of the speedup over PyTorch (>1: plugin faster)")
    summary = []
    for dtype_name in dtypes:
        for fmt_name in formats:
            for pass_name in ("fwd", "bwd", "fwd+bwd"):
                sel = [r for r in rows if r["dtype"] == dtype_name and r["format"] == fmt_name and r["pass"] == pass_name]
                g = geomean([r["speedup"] for r in sel])
                gf = geomean([r["fused_speedup"] for r in sel])
                summary.append({"dtype": dtype_name, "format": fmt_name, "pass": pass_name,
                                "speedup": g, "fused_speedup": gf})
                print(f"  {dtype_name:>8} {fmt_name:>4} {pass_name:>7}: GN {g:5.2f}x   GN+ReLU fused vs GN then ReLU {gf:5.2f}x")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"env": env, "rows": rows, "summary": summary}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
